//! Values worked by hand from the equations as printed (each comment
//! shows the arithmetic), the papers' own anchor points, and the edges of
//! the piecewise 2022 correction.

use super::*;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn us_wide_correction_matches_worked_values() {
    let f = Formula::EpaBarkjohn2021;
    // 0.524 × 10 − 0.0862 × 50 + 5.75 = 5.24 − 4.31 + 5.75
    assert!(close(f.apply(10.0, Some(50.0)).unwrap(), 6.68));
    // 0.524 × 100 − 0.0862 × 30 + 5.75 = 52.4 − 2.586 + 5.75
    assert!(close(f.apply(100.0, Some(30.0)).unwrap(), 55.564));
    // Humidity lowers the estimate: 10 % more RH, 0.862 µg/m³ less.
    let dry = f.apply(40.0, Some(20.0)).unwrap();
    let wet = f.apply(40.0, Some(30.0)).unwrap();
    assert!(close(dry - wet, 0.862));
    // 5.75 − 0.0862 × 90 = −2.008: reported as 0, never negative.
    assert_eq!(f.apply(0.0, Some(90.0)), Ok(0.0));
}

#[test]
fn the_2022_correction_meets_the_papers_anchor_points() {
    // The paper: the 2021 correction "up to 300 µg/m3" (PA_cf1 570 at
    // 50 % RH: 298.68 − 4.31 + 5.75 = 300.12) and the quadratic "above
    // 400 µg/m3" (PA_cf1 611: 157.168 + 239.512 + 3.44 = 400.12).
    let f = Formula::EpaBarkjohn2022;
    assert!(close(us_wide(570.0, 50.0), 300.12));
    assert!(close(f.apply(611.0, Some(50.0)).unwrap(), 400.120141));
    // Below 570 it is the 2021 correction, RH included.
    for (pa, rh) in [(0.5, 10.0), (35.0, 80.0), (300.0, 45.0), (569.999, 50.0)] {
        let v = f.apply(pa, Some(rh)).unwrap();
        assert_eq!(v, Formula::EpaBarkjohn2021.apply(pa, Some(rh)).unwrap());
    }
    // Mid-blend, PA 590, RH 50: w = 0.0244 × 590 − 13.9 = 0.496;
    // quadratic 146.5501 + 231.28 + 3.44 = 381.2701; line 309.16 − 4.31
    // + 5.75 = 310.6; 0.496 × 381.2701 + 0.504 × 310.6 = 345.6523696.
    assert!(close(f.apply(590.0, Some(50.0)).unwrap(), 345.6523696));
    // From 611 on RH no longer matters: 1000 → 421 + 392 + 3.44.
    assert!(close(f.apply(1000.0, Some(20.0)).unwrap(), 816.44));
    assert_eq!(
        f.apply(1000.0, Some(20.0)),
        f.apply(1000.0, Some(95.0)),
        "no RH term in the quadratic"
    );
}

#[test]
fn the_2022_pieces_meet_within_a_microgram_at_both_edges() {
    // The blend weight is 0.008 at 570 and 1.0084 at 611 (rounded
    // coefficients), so the pieces meet with a step of about 0.5 µg/m³;
    // nowhere more than 1 µg/m³, at any humidity.
    let f = Formula::EpaBarkjohn2022;
    for rh in [0.0, 25.0, 50.0, 75.0, 100.0] {
        for edge in [BLEND_FROM, BLEND_TO] {
            let below = f.apply(edge - 1e-9, Some(rh)).unwrap();
            let at = f.apply(edge, Some(rh)).unwrap();
            assert!(
                (at - below).abs() < 1.0,
                "rh {rh} edge {edge}: {below} -> {at}"
            );
        }
        // And the blend rises with PA all the way across.
        let mut last = f.apply(BLEND_FROM - 1.0, Some(rh)).unwrap();
        let mut pa = BLEND_FROM;
        while pa <= BLEND_TO + 1.0 {
            let v = f.apply(pa, Some(rh)).unwrap();
            assert!(v > last - 1.0, "rh {rh} pa {pa}: {last} -> {v}");
            last = v;
            pa += 0.5;
        }
    }
}

#[test]
fn a_value_without_a_usable_humidity_is_withheld() {
    for f in Formula::ALL {
        assert_eq!(f.apply(10.0, None), Err(Withheld::NoRh));
        assert_eq!(f.apply(10.0, Some(100.5)), Err(Withheld::RhOutOfRange));
        assert_eq!(f.apply(10.0, Some(-1.0)), Err(Withheld::RhOutOfRange));
        assert_eq!(f.apply(10.0, Some(f64::NAN)), Err(Withheld::RhOutOfRange));
        assert_eq!(f.apply(-0.1, Some(50.0)), Err(Withheld::BadInput));
        assert_eq!(f.apply(f64::INFINITY, Some(50.0)), Err(Withheld::BadInput));
        assert!(f.apply(10.0, Some(0.0)).is_ok() && f.apply(10.0, Some(100.0)).is_ok());
    }
}

#[test]
fn names_parse_with_and_without_their_version() {
    for f in Formula::ALL {
        assert_eq!(Formula::parse(f.name()), Some(f));
        assert_eq!(Formula::parse(&f.label()), Some(f));
        assert_eq!(Formula::parse(&format!("{}@99", f.name())), None);
    }
    assert_eq!(Formula::EpaBarkjohn2021.label(), "epa-barkjohn-2021@1");
    assert_eq!(Formula::parse("none"), None);
}
