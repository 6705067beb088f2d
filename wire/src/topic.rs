//! MQTT topic names: `{prefix}/{device}/{channel}` with the channels of the
//! topic table in `DESIGN.md`. The prefix defaults to `aeris/v1` and may have
//! several levels; it may not contain wildcards or empty levels.

/// Longest device id in bytes.
pub const MAX_DEVICE_ID_LEN: usize = 64;

/// Why a topic, prefix or device id is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("device id must be 1..={MAX_DEVICE_ID_LEN} characters of [A-Za-z0-9._-], got {0:?}")]
    BadDeviceId(String),
    #[error("topic prefix must be non-empty levels without '+', '#' or '$', got {0:?}")]
    BadPrefix(String),
    #[error("topic {0:?} is not under this prefix or names no known channel")]
    Unknown(String),
}

/// The channels of the wire protocol: the five of `DESIGN.md`, and
/// `up/config` (retained), where a device reports the desired
/// configuration it applied or refused ([`crate::ConfigReport`]). A
/// channel of its own rather than a field of the status, whose layout is
/// frozen (`wire/tests/status_layout.rs`): gateways that do not know it do
/// not subscribe to it, and the broker's ACL (`up/#`) already lets the
/// device publish it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    UpBatch,
    UpStatus,
    UpEvent,
    DownAck,
    DownCmd,
    UpConfig,
}

impl Channel {
    pub const ALL: [Channel; 6] = [
        Channel::UpBatch,
        Channel::UpStatus,
        Channel::UpEvent,
        Channel::DownAck,
        Channel::DownCmd,
        Channel::UpConfig,
    ];

    /// The topic levels after the device id.
    pub fn suffix(self) -> &'static str {
        match self {
            Channel::UpBatch => "up/batch",
            Channel::UpStatus => "up/status",
            Channel::UpEvent => "up/event",
            Channel::DownAck => "down/ack",
            Channel::DownCmd => "down/cmd",
            Channel::UpConfig => "up/config",
        }
    }

    fn from_suffix(s: &str) -> Option<Self> {
        Channel::ALL.into_iter().find(|c| c.suffix() == s)
    }
}

/// Checks a device id: it becomes a topic level and a database key.
pub fn validate_device_id(id: &str) -> Result<(), TopicError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_DEVICE_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(TopicError::BadDeviceId(id.to_owned()))
    }
}

/// Builds and parses topics under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
}

impl Default for Topics {
    fn default() -> Self {
        Topics {
            prefix: "aeris/v1".to_owned(),
        }
    }
}

impl Topics {
    pub fn new(prefix: &str) -> Result<Self, TopicError> {
        let ok = !prefix.is_empty()
            && prefix
                .split('/')
                .all(|l| !l.is_empty() && !l.contains(['+', '#', '$']));
        if ok {
            Ok(Topics {
                prefix: prefix.to_owned(),
            })
        } else {
            Err(TopicError::BadPrefix(prefix.to_owned()))
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The topic of `channel` for `device` (the device id must be valid).
    pub fn topic(&self, device: &str, channel: Channel) -> String {
        format!("{}/{}/{}", self.prefix, device, channel.suffix())
    }

    pub fn batch(&self, device: &str) -> String {
        self.topic(device, Channel::UpBatch)
    }
    pub fn ack(&self, device: &str) -> String {
        self.topic(device, Channel::DownAck)
    }
    pub fn status(&self, device: &str) -> String {
        self.topic(device, Channel::UpStatus)
    }
    pub fn event(&self, device: &str) -> String {
        self.topic(device, Channel::UpEvent)
    }
    pub fn cmd(&self, device: &str) -> String {
        self.topic(device, Channel::DownCmd)
    }
    pub fn config(&self, device: &str) -> String {
        self.topic(device, Channel::UpConfig)
    }

    /// A filter matching `channel` of every device.
    pub fn all_devices(&self, channel: Channel) -> String {
        format!("{}/+/{}", self.prefix, channel.suffix())
    }

    /// The shared-subscription filter with which gateways split `channel`.
    pub fn shared(&self, group: &str, channel: Channel) -> String {
        format!("$share/{group}/{}", self.all_devices(channel))
    }

    /// Splits a concrete topic into its device id and channel.
    pub fn parse<'t>(&self, topic: &'t str) -> Result<(&'t str, Channel), TopicError> {
        let unknown = || TopicError::Unknown(topic.to_owned());
        let rest = topic
            .strip_prefix(self.prefix.as_str())
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(unknown)?;
        let (device, suffix) = rest.split_once('/').ok_or_else(unknown)?;
        validate_device_id(device)?;
        let channel = Channel::from_suffix(suffix).ok_or_else(unknown)?;
        Ok((device, channel))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_and_parses_every_channel() {
        let t = Topics::new("city/aeris/v1").unwrap();
        for c in Channel::ALL {
            let topic = t.topic("dev-7", c);
            assert_eq!(t.parse(&topic).unwrap(), ("dev-7", c));
        }
        assert_eq!(t.batch("a"), "city/aeris/v1/a/up/batch");
        assert_eq!(
            t.shared("aeris", Channel::UpBatch),
            "$share/aeris/city/aeris/v1/+/up/batch"
        );
    }

    #[test]
    fn rejects_foreign_and_malformed_topics() {
        let t = Topics::default();
        for bad in [
            "aeris/v2/dev/up/batch",
            "aeris/v1/dev/up/other",
            "aeris/v1/dev",
            "aeris/v1//up/batch",
            "aeris/v1/d+v/up/batch",
            "aeris/v1x/dev/up/batch",
            "",
        ] {
            assert!(t.parse(bad).is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn rejects_bad_prefixes_and_device_ids() {
        for bad in ["", "a//b", "a/#", "a/+/b", "/a", "a/", "$SYS"] {
            assert!(Topics::new(bad).is_err(), "{bad:?}");
        }
        assert!(validate_device_id(&"x".repeat(64)).is_ok());
        for bad in ["", "a/b", "a b", "ü", &"x".repeat(65)] {
            assert!(validate_device_id(bad).is_err(), "{bad:?}");
        }
    }
}
