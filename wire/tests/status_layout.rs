//! The status layout every agent sends (format version 1, see
//! `aeris_wire::message::Status`) is frozen: the gateway stores all of it
//! (the `devices` table, `/api/devices`), so a field added to the status
//! would have to come with a new format version, and these bytes, written
//! by today's agents, must keep decoding to the same status.

use aeris_wire::{decode, encode, DeviceState, Loss, ModelVersion, Status};

fn sample() -> Status {
    Status {
        device: "lamp-0042".into(),
        boot_id: 0x1234_5678_9abc_def0,
        ts_ms: 1_700_000_000_000,
        state: DeviceState::Online,
        agent_version: "1.4.0".into(),
        last_seq: 900,
        queued_readings: 120,
        queued_bytes: 7_200,
        oldest_unsent_ms: Some(1_699_999_400_000),
        losses: vec![Loss {
            reason: "dropped".into(),
            count: 5,
        }],
        models: vec![ModelVersion {
            name: "pm25_nowcast".into(),
            version: "1.0.1".into(),
        }],
        drain_eta_s: Some(95),
    }
}

const BYTES: &str = "01096c616d702d30303432f0bdf3d589cf959a1280a0abfef9620005312e342e30840778a038018081e2fdf962010764726f7070656405010c706d32355f6e6f776361737405312e302e31015f";

#[test]
fn a_status_as_agents_send_it_decodes_to_every_field() {
    let hex: String = encode(&sample())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(hex, BYTES);
    let bytes: Vec<u8> = (0..BYTES.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&BYTES[i..i + 2], 16).unwrap())
        .collect();
    assert_eq!(decode::<Status>(&bytes), Ok(sample()));
}
