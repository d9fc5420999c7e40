//! Policy files for tests: a [`PolicyFile`] with every field set, rendered as TOML.

/// A policy file.
pub struct PolicyFile<'a> {
    /// `policy.name`.
    pub name: &'a str,
    /// `policy.priority`.
    pub priority: i32,
    /// `policy.target`.
    pub target: &'a str,
    /// `window.schedule`.
    pub schedule: &'a str,
    /// `window.duration`.
    pub duration: &'a str,
    /// `window.timezone`.
    pub timezone: &'a str,
    /// `reboot.expected_duration`.
    pub expected: &'a str,
    /// `rollout.max_concurrent`.
    pub max_concurrent: u32,
    /// `rollout.max_per_minute`.
    pub max_per_minute: u32,
    /// `rollout.max_failures`.
    pub max_failures: &'a str,
}

impl Default for PolicyFile<'_> {
    fn default() -> Self {
        Self {
            name: "weekly",
            priority: 10,
            target: "tags.role = 'gateway'",
            schedule: "0 2 * * SUN",
            duration: "2h",
            timezone: "device",
            expected: "5m",
            max_concurrent: 10,
            max_per_minute: 100,
            max_failures: "10%",
        }
    }
}

impl PolicyFile<'_> {
    /// The file's TOML text.
    pub fn text(&self) -> String {
        format!(
            r#"[policy]
name = "{}"
priority = {}
target = "{}"

[window]
schedule = "{}"
duration = "{}"
timezone = "{}"

[reboot]
expected_duration = "{}"
method_timeout = "10s"

[rollout]
max_concurrent = {}
max_per_minute = {}
max_failures = "{}"
"#,
            self.name,
            self.priority,
            self.target,
            self.schedule,
            self.duration,
            self.timezone,
            self.expected,
            self.max_concurrent,
            self.max_per_minute,
            self.max_failures
        )
    }
}
