//! The demo's simulated fleet, planned without I/O: device ids, zones and twin tags.
//!
//! Devices are named and zoned by the simulator's one convention
//! ([`casement_agent::simulate::numbered`]: `demo-0000`, `demo-0001`, … with the zones
//! round-robin), and the simulator is handed this plan ([`PlannedDevice::simulated`]): it
//! registers each device once, with these tags, and runs its agent in this zone. Roles alternate
//! per round of zones (every zone gets gateways and POS terminals), every device is
//! `env = 'prod'`, and the first few are also in the canary ring.

use std::collections::BTreeMap;

use casement_agent::simulate;
use chrono_tz::Tz;

/// Prefix of the simulated devices' ids.
pub const DEVICE_PREFIX: &str = "demo-";
/// Most devices in the canary ring.
pub const MAX_CANARIES: usize = 10;

/// A zone the fleet lives in, with the `region` tag its devices get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Site {
    /// The IANA zone the devices' agents report.
    pub zone: Tz,
    /// The `region` tag.
    pub region: &'static str,
}

/// Six zones on five continents.
pub fn default_sites() -> Vec<Site> {
    vec![
        Site {
            zone: chrono_tz::Europe::Amsterdam,
            region: "europe",
        },
        Site {
            zone: chrono_tz::America::New_York,
            region: "north-america",
        },
        Site {
            zone: chrono_tz::Asia::Tokyo,
            region: "asia",
        },
        Site {
            zone: chrono_tz::Australia::Sydney,
            region: "oceania",
        },
        Site {
            zone: chrono_tz::America::Sao_Paulo,
            region: "south-america",
        },
        Site {
            zone: chrono_tz::Africa::Johannesburg,
            region: "africa",
        },
    ]
}

/// What a device is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// An in-store IoT gateway (`role = 'gateway'`).
    Gateway,
    /// A point-of-sale terminal (`role = 'pos'`).
    Pos,
}

impl Role {
    /// The `role` tag.
    pub fn tag(self) -> &'static str {
        match self {
            Role::Gateway => "gateway",
            Role::Pos => "pos",
        }
    }
}

/// One planned device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedDevice {
    /// Device id.
    pub id: String,
    /// The zone its agent reports.
    pub zone: Tz,
    /// Its role.
    pub role: Role,
    /// Whether it is in the canary ring.
    pub canary: bool,
    /// Twin tags: `role`, `env`, `region`, and `ring` for canaries (the simulator adds `zone`).
    pub tags: BTreeMap<String, String>,
}

impl PlannedDevice {
    /// The device as the simulator takes it: id, zone, tags.
    pub fn simulated(&self) -> simulate::PlannedDevice {
        simulate::PlannedDevice {
            id: self.id.clone(),
            zone: self.zone,
            tags: self.tags.clone(),
        }
    }

    /// The twin as a policy target condition sees it (`deviceId` and `tags`).
    pub fn twin(&self) -> serde_json::Value {
        serde_json::json!({ "deviceId": self.id, "tags": self.simulated().twin_tags() })
    }
}

/// How many devices of `devices` are canaries: one in twenty, at least one, at most
/// [`MAX_CANARIES`].
pub fn canaries(devices: usize) -> usize {
    (devices / 20).clamp(1, MAX_CANARIES).min(devices)
}

/// Plans `devices` devices over `sites` (which must not be empty; an empty list plans nothing).
pub fn plan(devices: usize, sites: &[Site]) -> Vec<PlannedDevice> {
    if sites.is_empty() {
        return Vec::new();
    }
    let canaries = canaries(devices);
    let zones: Vec<Tz> = sites.iter().map(|s| s.zone).collect();
    simulate::numbered(DEVICE_PREFIX, devices, &zones)
        .into_iter()
        .enumerate()
        .map(|(n, device)| {
            let site = sites[n % sites.len()];
            // Alternate per round of zones, so every zone has both roles.
            let role = if (n / sites.len()).is_multiple_of(2) {
                Role::Gateway
            } else {
                Role::Pos
            };
            let canary = n < canaries;
            let mut tags = BTreeMap::from([
                ("role".to_owned(), role.tag().to_owned()),
                ("env".to_owned(), "prod".to_owned()),
                ("region".to_owned(), site.region.to_owned()),
            ]);
            if canary {
                tags.insert("ring".to_owned(), "canary".to_owned());
            }
            PlannedDevice {
                id: device.id,
                zone: device.zone,
                role,
                canary,
                tags,
            }
        })
        .collect()
}

/// Counts of a planned fleet, for the story.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FleetCounts {
    /// Gateways.
    pub gateways: usize,
    /// POS terminals.
    pub pos: usize,
    /// Canaries (of either role).
    pub canaries: usize,
}

/// Counts the roles of a planned fleet.
pub fn counts(fleet: &[PlannedDevice]) -> FleetCounts {
    let mut c = FleetCounts::default();
    for d in fleet {
        match d.role {
            Role::Gateway => c.gateways += 1,
            Role::Pos => c.pos += 1,
        }
        c.canaries += usize::from(d.canary);
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn ids_and_zones_are_the_simulators_convention() {
        let sites = default_sites();
        let fleet = plan(14, &sites);
        assert_eq!(fleet.len(), 14);
        assert_eq!(fleet[0].id, "demo-0000");
        assert_eq!(fleet[13].id, "demo-0013");
        for (n, d) in fleet.iter().enumerate() {
            assert_eq!(d.zone, sites[n % sites.len()].zone, "{}", d.id);
            assert_eq!(d.tags["region"], sites[n % sites.len()].region);
        }
    }

    #[test]
    fn every_zone_has_both_roles_and_four_continents_are_covered() {
        let sites = default_sites();
        let fleet = plan(200, &sites);
        for site in &sites {
            let roles: BTreeSet<Role> = fleet
                .iter()
                .filter(|d| d.zone == site.zone)
                .map(|d| d.role)
                .collect();
            assert_eq!(roles.len(), 2, "{}", site.zone);
        }
        let regions: BTreeSet<&str> = sites.iter().map(|s| s.region).collect();
        assert!(regions.len() >= 4);
        let c = counts(&fleet);
        assert_eq!(c.gateways + c.pos, 200);
        assert!(c.gateways.abs_diff(c.pos) <= sites.len());
        assert_eq!(c.canaries, 10);
    }

    #[test]
    fn canary_ring_size() {
        assert_eq!(canaries(0), 0);
        assert_eq!(canaries(1), 1);
        assert_eq!(canaries(19), 1);
        assert_eq!(canaries(60), 3);
        assert_eq!(canaries(10_000), MAX_CANARIES);
        let fleet = plan(60, &default_sites());
        let ring: Vec<&str> = fleet
            .iter()
            .filter(|d| d.tags.get("ring").map(String::as_str) == Some("canary"))
            .map(|d| d.id.as_str())
            .collect();
        assert_eq!(ring, ["demo-0000", "demo-0001", "demo-0002"]);
    }

    #[test]
    fn no_sites_no_devices() {
        assert!(plan(5, &[]).is_empty());
    }
}
