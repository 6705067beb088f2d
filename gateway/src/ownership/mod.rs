//! Device ownership of a message: who may write what. A message is taken
//! for the device named by the topic it arrived on, and only if the payload
//! names the same device. (Not to be confused with [`crate::api::auth`],
//! the HTTP API's bearer tokens.)
//!
//! Identity is split between the broker and the gateway: the device id is
//! the MQTT user name (or the TLS client certificate's CN with
//! `use_identity_as_username`), and the broker's ACL (`deploy/mosquitto/`)
//! lets a client publish only under `{prefix}/<its id>/up/#`. MQTT 3.1.1
//! does not tell a subscriber who published, so the gateway cannot see the
//! identity itself; what it checks is that the payload agrees with the
//! topic the ACL vouched for. Together: a device can only write its own data.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OwnershipError {
    #[error("batch names device {payload:?} but arrived on {topic:?}'s topic")]
    DeviceMismatch { topic: String, payload: String },
}

impl OwnershipError {
    pub fn reason(&self) -> &'static str {
        match self {
            OwnershipError::DeviceMismatch { .. } => "device_mismatch",
        }
    }
}

/// Accepts a payload naming `payload_device` on `topic_device`'s topic only
/// if they are the same device.
pub fn authorize(topic_device: &str, payload_device: &str) -> Result<(), OwnershipError> {
    if payload_device == topic_device {
        Ok(())
    } else {
        Err(OwnershipError::DeviceMismatch {
            topic: topic_device.to_owned(),
            payload: payload_device.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_naming_another_device_is_refused() {
        assert!(authorize("a", "a").is_ok());
        let e = authorize("a", "b").unwrap_err();
        assert_eq!(e.reason(), "device_mismatch");
    }
}
