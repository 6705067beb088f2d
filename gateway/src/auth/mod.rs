//! Who may write what. A batch is stored for the device named by the topic it
//! arrived on (which the broker's ACL ties to the client's identity), and only
//! if the payload names the same device: a device cannot write as another.

use aeris_wire::Batch;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("batch names device {payload:?} but arrived on {topic:?}'s topic")]
    DeviceMismatch { topic: String, payload: String },
}

impl AuthError {
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::DeviceMismatch { .. } => "device_mismatch",
        }
    }
}

pub fn authorize(topic_device: &str, batch: &Batch) -> Result<(), AuthError> {
    if batch.device == topic_device {
        Ok(())
    } else {
        Err(AuthError::DeviceMismatch {
            topic: topic_device.to_owned(),
            payload: batch.device.clone(),
        })
    }
}
