#!/usr/bin/env python3
"""Reference PM2.5 NowCast and daily AQI, written from EPA's documents and
independent of the Rust implementation (`aeris_wire::aqi`), for
tests/tests/beijing_replay.rs.

Sources (the same as docs/air-quality.md):
- EPA "PM NowCast" fact sheet and AirNow-Tech "The NowCast for PM2.5 and
  PM10": the 12 most recent hourly concentrations c_1 (current) .. c_12;
  w* = c_min / c_max over the hours with data, w = max(w*, 0.5);
  NowCast = sum(w^(i-1) c_i) / sum(w^(i-1)) over the hours with data;
  at least two of the three most recent hours must have data; the result
  is truncated to 0.1 ug/m3.
- EPA TAD 2024 (EPA-454/B-24-002) with the 2024 PM2.5 breakpoints:
  truncate to 0.1 ug/m3, Equation 1, round to the nearest integer.
- AirNow-Tech "Daily and Hourly AQI - PM2.5": the daily value is the mean
  of the hourly values midnight to midnight, valid with 18 of 24 hours.

Arithmetic is exact (fractions.Fraction): the data are integers, so every
truncation and rounding below is decided without floating-point error.

Usage: epa_pm25.py CSV FIRST_DAY DAYS  (FIRST_DAY as YYYY-MM-DD, local
time of the file). Prints JSON: {"hours": [[y,m,d,h,value|null,
nowcast|null, aqi|null]...], "days": [[y,m,d,valid_hours,mean|null,
aqi|null]...]} with hourly concentrations as strings of one decimal
and daily means with six.
"""

import csv
import datetime as dt
import json
import math
import sys
from fractions import Fraction as F

# 2024 PM2.5 rows: (C_lo, C_hi, I_lo, I_hi), ug/m3 with one decimal.
BREAKPOINTS = [
    (F("0.0"), F("9.0"), 0, 50),
    (F("9.1"), F("35.4"), 51, 100),
    (F("35.5"), F("55.4"), 101, 150),
    (F("55.5"), F("125.4"), 151, 200),
    (F("125.5"), F("225.4"), 201, 300),
    (F("225.5"), F("325.4"), 301, 500),
]


def trunc1(c):
    """Truncate toward zero to 0.1."""
    return F(math.floor(c * 10), 10)


def aqi(c):
    c = trunc1(c)
    if c > BREAKPOINTS[-1][1]:
        return 500
    for lo, hi, ilo, ihi in BREAKPOINTS:
        if lo <= c <= hi:
            i = F(ihi - ilo) / (hi - lo) * (c - lo) + ilo
            return math.floor(i + F(1, 2))  # nearest, halves up
    raise ValueError(f"no row for {c}")


def nowcast(recent):
    """recent[0] is the current hour; None where missing."""
    window = recent[:12]
    if sum(1 for c in window[:3] if c is not None) < 2:
        return None
    present = [c for c in window if c is not None]
    cmax = max(present)
    w = F(1) if cmax <= 0 else max(min(present) / cmax, F(1, 2))
    num = sum(w**i * c for i, c in enumerate(window) if c is not None)
    den = sum(w**i for i, c in enumerate(window) if c is not None)
    return trunc1(num / den)


def fmt(c):
    return None if c is None else f"{float(c):.1f}"


def main():
    path, first, days = sys.argv[1], dt.date.fromisoformat(sys.argv[2]), int(sys.argv[3])
    values = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            t = dt.datetime(int(row["year"]), int(row["month"]), int(row["day"]), int(row["hour"]))
            values[t] = None if row["pm2.5"] == "NA" else F(int(row["pm2.5"]))
    start = dt.datetime.combine(first, dt.time())
    hours, out_days = [], []
    for d in range(days):
        day_values = []
        for h in range(24):
            t = start + dt.timedelta(days=d, hours=h)
            recent = [values.get(t - dt.timedelta(hours=i)) for i in range(12)]
            # Hours before the replayed range were never sent.
            recent = [c if t - dt.timedelta(hours=i) >= start else None for i, c in enumerate(recent)]
            nc = nowcast(recent)
            hours.append([t.year, t.month, t.day, t.hour, fmt(values.get(t)), fmt(nc), None if nc is None else aqi(nc)])
            if values.get(t) is not None:
                day_values.append(values[t])
        mean = sum(day_values) / len(day_values) if day_values else None
        valid = len(day_values) >= 18
        day = start.date() + dt.timedelta(days=d)
        exact = None if mean is None else f"{float(mean):.6f}"
        out_days.append([day.year, day.month, day.day, len(day_values), exact, aqi(mean) if valid else None])
    json.dump({"hours": hours, "days": out_days}, sys.stdout)


if __name__ == "__main__":
    main()
