//! The varint and scaled-decimal building blocks; the round trips of
//! whole batches are in `wire/tests/columnar.rs`.

use super::decode::Reader;
use super::encode::{put_column, put_sv, scaled};

#[test]
fn varints_and_zigzag_round_trip_at_the_edges() {
    for v in [0i64, 1, -1, 63, -64, 64, i64::MAX, i64::MIN, 1 << 40] {
        let mut out = Vec::new();
        put_sv(&mut out, v);
        let mut r = Reader { buf: &out };
        assert_eq!(r.sv().unwrap(), v);
        assert!(r.buf.is_empty());
    }
    // 11 continuation bytes, or a 10th byte above 1, overflow.
    let mut r = Reader {
        buf: &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02],
    };
    assert!(r.uv().is_err());
}

#[test]
fn short_decimals_use_the_smallest_exact_scale() {
    assert_eq!(scaled(12.3, 1), Some(123));
    assert_eq!(scaled(12.3, 0), None);
    assert_eq!(scaled(0.1 + 0.2, 1), None, "0.30000000000000004 is not 0.3");
    assert_eq!(
        scaled(-0.0, 0),
        None,
        "-0.0 must travel raw to keep its sign"
    );
    assert_eq!(scaled(1e300, 0), None);
    let mut out = Vec::new();
    put_column(&mut out, &[12.3, 12.4, 12.2]);
    assert_eq!(out, vec![1, 246, 1, 2, 3]);
}
