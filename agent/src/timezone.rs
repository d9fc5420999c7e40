//! The device's IANA time zone: `--timezone`, or the system's.
//!
//! The system zone is read from `/etc/timezone` (Debian and friends) or from the target of the
//! `/etc/localtime` symlink (`…/zoneinfo/Europe/Amsterdam`, systemd's `timedatectl`). When
//! neither names a zone the agent falls back to UTC and says so.

use std::path::{Path, PathBuf};

use chrono_tz::Tz;

/// Where a zone came from, for the log line at startup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZoneSource {
    /// Read from `/etc/timezone`.
    EtcTimezone,
    /// Read from the target of the `/etc/localtime` symlink.
    LocaltimeLink(PathBuf),
    /// Nothing named a zone; UTC is used.
    Fallback,
}

/// Detects the system zone from the standard files.
pub fn system_zone() -> (Tz, ZoneSource) {
    let etc_timezone = std::fs::read_to_string("/etc/timezone").ok();
    let link = std::fs::read_link("/etc/localtime").ok();
    zone_from_sources(etc_timezone.as_deref(), link.as_deref())
}

/// Picks the zone from the contents of `/etc/timezone` and the target of `/etc/localtime`,
/// in that order; UTC when neither names a known zone.
pub fn zone_from_sources(
    etc_timezone: Option<&str>,
    localtime_link: Option<&Path>,
) -> (Tz, ZoneSource) {
    if let Some(zone) = etc_timezone
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .and_then(|name| name.parse::<Tz>().ok())
    {
        return (zone, ZoneSource::EtcTimezone);
    }
    if let Some(link) = localtime_link
        && let Some(zone) = zone_from_zoneinfo_path(link)
    {
        return (zone, ZoneSource::LocaltimeLink(link.to_path_buf()));
    }
    (Tz::UTC, ZoneSource::Fallback)
}

/// `…/zoneinfo/America/Argentina/Buenos_Aires` → that zone. Also accepts `zoneinfo/posix/…`.
fn zone_from_zoneinfo_path(path: &Path) -> Option<Tz> {
    let text = path.to_str()?;
    let (_, name) = text.rsplit_once("zoneinfo/")?;
    let name = name.strip_prefix("posix/").unwrap_or(name);
    name.parse::<Tz>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etc_timezone_wins_and_is_trimmed() {
        let (zone, source) = zone_from_sources(
            Some("Europe/Amsterdam\n"),
            Some(Path::new("/usr/share/zoneinfo/Asia/Tokyo")),
        );
        assert_eq!(zone, chrono_tz::Europe::Amsterdam);
        assert_eq!(source, ZoneSource::EtcTimezone);
    }

    #[test]
    fn localtime_link_is_used_when_etc_timezone_is_missing_or_bad() {
        for etc in [None, Some(""), Some("Not/AZone")] {
            let (zone, source) = zone_from_sources(
                etc,
                Some(Path::new(
                    "../usr/share/zoneinfo/America/Argentina/Buenos_Aires",
                )),
            );
            assert_eq!(zone, chrono_tz::America::Argentina::Buenos_Aires);
            assert!(matches!(source, ZoneSource::LocaltimeLink(_)));
        }
        let (zone, _) = zone_from_sources(
            None,
            Some(Path::new("/usr/share/zoneinfo/posix/Asia/Tokyo")),
        );
        assert_eq!(zone, chrono_tz::Asia::Tokyo);
    }

    #[test]
    fn nothing_usable_falls_back_to_utc() {
        let (zone, source) = zone_from_sources(None, Some(Path::new("/etc/some-file")));
        assert_eq!(zone, Tz::UTC);
        assert_eq!(source, ZoneSource::Fallback);
        assert_eq!(zone_from_sources(None, None).1, ZoneSource::Fallback);
    }
}
