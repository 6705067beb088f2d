//! A batch on the wire: which layout its version byte selects.
//!
//! Version 1 ([`crate::FORMAT_VERSION`]) is the postcard layout every
//! message shares ([`crate::codec`]); version 2 ([`COLUMNAR_VERSION`]) is the
//! columnar layout ([`crate::columnar`]). This module sits above both, so
//! the message types ([`crate::message`]) know nothing of the columnar
//! layout and the columnar layout knows only the types.

use crate::codec::{WireError, WireMessage};
use crate::columnar::{decode_body, COLUMNAR_VERSION};
use crate::message::Batch;

impl WireMessage for Batch {
    fn validate(&self) -> Result<(), WireError> {
        self.check()
    }

    fn decode_other_version(version: u8, body: &[u8]) -> Option<Result<Self, WireError>> {
        (version == COLUMNAR_VERSION).then(|| decode_body(body))
    }
}
