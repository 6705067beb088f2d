//! The bits of [`crate::Reading::flags`]: what the edge learned about a
//! reading besides its values. 0 means nothing to say. Every bit has one
//! meaning across the workspace (the cloud stores `flags` as is; SQL and
//! the map test them by number), so a new bit takes the next free one and
//! a bit is never reused.

/// Bit 0: a model with a decision threshold scored the reading above it
/// (a suspected sensor fault).
pub const FLAG_MODEL_ANOMALY: u32 = 1 << 0;
/// Bit 1: a value jumped far from its recent median.
pub const FLAG_SPIKE: u32 = 1 << 1;
/// Bit 2: a value repeated unchanged too many times.
pub const FLAG_STUCK: u32 = 1 << 2;
/// Bit 3: the reading is a window aggregate written by the edge's disk
/// budget in place of raw readings. For each quantity `q` it carries `q`
/// (mean), `q.min`, `q.max` and `q.n` (how many raw values).
pub const FLAG_AGGREGATE: u32 = 1 << 3;
/// Bit 4: the reading had no timestamp of its own; its time is when the
/// agent received it.
pub const FLAG_ARRIVAL_TIME: u32 = 1 << 4;
/// Bit 5: arrival-stamped and delivered right after a reconnect from the
/// broker's stored session; measured earlier than its stamp (by up to the
/// time the agent was away).
pub const FLAG_REPLAYED: u32 = 1 << 5;
/// Bit 6: the sensor is configured for a correction
/// ([`crate::correction`]) that could not be applied (no relative
/// humidity, ...): the reading carries its raw value under
/// `raw:<quantity>:<formula>@<version>` and no corrected one.
pub const FLAG_CORRECTION_WITHHELD: u32 = 1 << 6;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flag_is_its_own_bit() {
        let all = [
            FLAG_MODEL_ANOMALY,
            FLAG_SPIKE,
            FLAG_STUCK,
            FLAG_AGGREGATE,
            FLAG_ARRIVAL_TIME,
            FLAG_REPLAYED,
            FLAG_CORRECTION_WITHHELD,
        ];
        for (i, f) in all.iter().enumerate() {
            assert_eq!(*f, 1 << i);
        }
    }
}
