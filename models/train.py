#!/usr/bin/env python3
"""Train, export and document the Aeris edge models.

One script, deterministic (fixed seeds, single-threaded BLAS):

  pm25_nowcast  PM2.5 nowcast / gap-filler for one station, trained on the
                Beijing US-embassy hourly set (2010-2014).
  pm_anomaly    sensor-fault / anomaly scorer for daily PM10 readings, built on
                the German rural PM10 fleet (AirBase, 1998-2009).

For each model it writes <out>/<name>/model.onnx, manifest.json and
test_vectors.json.  Every exported graph uses only the standard ONNX domain
(no ai.onnx.ml) because the Rust runtime (tract-onnx 0.23) does not implement
ai.onnx.ml; the script fails if any node is outside the standard domain.

Usage:  python train.py [--data DIR] [--out DIR]
"""
import os

# Deterministic and modest CPU use: set before numpy / onnxruntime load BLAS.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
             "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import hashlib
import json
import random
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import onnx
from onnx import TensorProto, helper, numpy_helper
import onnxruntime as ort
try:
    import tract  # Python bindings of the same engine the Rust runtime uses
except ImportError:  # pragma: no cover
    tract = None
import sklearn
import skl2onnx
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import Ridge
from sklearn.metrics import roc_auc_score
from sklearn.neural_network import MLPRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType

SEED = 20240601
OPSET = 17
IR_VERSION = 8  # the IR version that goes with opset 17
MODEL_VERSION = "1.0.0"
N_TEST_VECTORS = 128  # two batches of 64; every row also runs as batch 1
STANDARD_DOMAINS = ("", "ai.onnx")

SCRIPT_DIR = Path(__file__).resolve().parent
_T0 = time.time()
_STEP = [0]


def step(msg):
    _STEP[0] += 1
    print(f"[{time.time() - _T0:7.1f}s] step {_STEP[0]:2d}: {msg}", flush=True)


def info(msg):
    print(f"             {msg}", flush=True)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def f32_list(a):
    """float32 array -> nested python floats; exact (float32 -> float64 is lossless)."""
    return np.asarray(a, dtype=np.float32).astype(np.float64).tolist()


def rnd(x, nd=4):
    return float(round(float(x), nd))


# --------------------------------------------------------------------------
# ONNX helpers shared by both models
# --------------------------------------------------------------------------

def finalize_model(model, doc):
    """Pin metadata so the bytes are stable and the graph is tract-friendly."""
    model.ir_version = IR_VERSION
    model.producer_name = "aeris-models/train.py"
    model.producer_version = MODEL_VERSION
    model.domain = "org.aeris"
    model.model_version = int(MODEL_VERSION.split(".")[0])
    model.doc_string = doc
    # drop opset imports that no node uses (skl2onnx may add ai.onnx.ml)
    used = {n.domain for n in model.graph.node}
    keep = [o for o in model.opset_import if o.domain in used or o.domain in STANDARD_DOMAINS]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    # the node that produces a graph output is named after it (tract reports node names)
    outs = {o.name for o in model.graph.output}
    names = {n.name for n in model.graph.node}
    for n in model.graph.node:
        for o in n.output:
            if o in outs and n.name != o and o not in names:
                n.name = o
    # name the symbolic batch dimension
    for vi in list(model.graph.input) + list(model.graph.output):
        d0 = vi.type.tensor_type.shape.dim[0]
        d0.ClearField("dim_value")
        d0.dim_param = "N"
    return model


def verify_standard_ops(model, name):
    bad = [(n.name, n.op_type, n.domain) for n in model.graph.node
           if n.domain not in STANDARD_DOMAINS]
    bad_imports = [o.domain for o in model.opset_import if o.domain not in STANDARD_DOMAINS]
    if bad or bad_imports:
        raise SystemExit(f"FATAL: {name} uses non-standard ONNX domains: nodes={bad} "
                         f"opset_imports={bad_imports}; tract-onnx cannot load this")
    onnx.checker.check_model(model, full_check=True)
    ops = sorted({n.op_type for n in model.graph.node})
    info(f"{name}: {len(model.graph.node)} nodes, all in the standard domain; ops = {ops}")
    return ops


def ort_session(path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def ort_run(sess, X):
    return sess.run(None, {sess.get_inputs()[0].name: np.ascontiguousarray(X, dtype=np.float32)})[0]


def write_test_vectors(path, name, model_path, sess, X, notes, tol, output_name, output_meaning):
    X = np.asarray(X, dtype=np.float32)
    assert X.shape[0] == N_TEST_VECTORS
    full = ort_run(sess, X)
    # the same rows as batch 1 and as batches of 64 must agree with the full batch
    b1 = np.concatenate([ort_run(sess, X[i:i + 1]) for i in range(len(X))])
    b64 = np.concatenate([ort_run(sess, X[i:i + 64]) for i in range(0, len(X), 64)])
    d1 = float(np.max(np.abs(b1 - full)))
    d64 = float(np.max(np.abs(b64 - full)))
    lim = tol["abs"] + tol["rel"] * np.abs(full)
    if np.any(np.abs(b1 - full) > lim) or np.any(np.abs(b64 - full) > lim):
        raise SystemExit(f"FATAL: {name}: batch-1/batch-64 outputs differ from the full batch "
                         f"beyond tolerance (max {d1}, {d64})")
    doc = {
        "model": name,
        "version": MODEL_VERSION,
        "model_file": "model.onnx",
        "model_sha256": sha256_file(model_path),
        "generated_with": f"onnxruntime {ort.__version__} CPUExecutionProvider, 1 thread",
        "input_name": sess.get_inputs()[0].name,
        "input_shape": list(X.shape),
        "output_name": output_name,
        "output_shape": list(full.shape),
        "output_meaning": output_meaning,
        "batch_sizes": [1, 64, N_TEST_VECTORS],
        "batching_check": {"max_abs_diff_batch1_vs_full": d1, "max_abs_diff_batch64_vs_full": d64},
        "tolerance": tol,
        "comparison_rule": "|actual - expected| <= abs + rel * |expected|, element-wise",
        "precision_note": "values are float32 written as exact decimal doubles; parse as f32",
        "row_notes": notes,
        "inputs": f32_list(X),
        "expected": f32_list(full),
    }
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    # re-read and reproduce, as the runtime will
    with open(path) as f:
        back = json.load(f)
    again = ort_run(sess, np.array(back["inputs"], dtype=np.float32))
    exp = np.array(back["expected"], dtype=np.float32)
    if not np.array_equal(again, exp):
        raise SystemExit(f"FATAL: {name}: test vectors do not reproduce from the JSON file")
    info(f"{name}: {len(X)} test vectors written and reproduced exactly "
         f"(batch-1 max diff {d1:.3g}, batch-64 max diff {d64:.3g})")


def tract_check(mdir, name):
    """Load model.onnx with tract at fixed shapes [1,W], [64,W], [128,W] and compare with the
    onnxruntime test vectors, as the Rust runtime will."""
    tv = json.loads((mdir / "test_vectors.json").read_text())
    X = np.array(tv["inputs"], dtype=np.float32)
    E = np.array(tv["expected"], dtype=np.float32)
    tol = tv["tolerance"]
    width = X.shape[1]
    worst = 0.0
    for b in (1, 64, len(X)):
        im = tract.onnx().load(str(mdir / "model.onnx"))
        im.set_input_fact(0, f"{b},{width},f32")
        run = im.into_model().into_runnable()
        O = np.concatenate([run.run([X[i:i + b]])[0].to_numpy() for i in range(0, len(X), b)])
        d = np.abs(O - E)
        worst = max(worst, float(d.max()))
        if O.shape != E.shape or np.any(d > tol["abs"] + tol["rel"] * np.abs(E)):
            raise SystemExit(f"FATAL: {name}: tract output differs from onnxruntime beyond "
                             f"tolerance at batch {b} (max abs diff {d.max()})")
    info(f"{name}: tract {tract_version()} loads it at fixed shapes [1,{width}], [64,{width}], "
         f"[{len(X)},{width}] and matches the test vectors (max abs diff {worst:.3g})")


def tract_version():
    try:
        from importlib.metadata import version
        return version("tract")
    except Exception:  # pragma: no cover
        return "?"


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def env_versions():
    return {
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "scikit-learn": sklearn.__version__,
        "skl2onnx": skl2onnx.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
    }


# --------------------------------------------------------------------------
# (a) pm25_nowcast
# --------------------------------------------------------------------------

NOWCAST_LAGS = 6
NOWCAST_FEATURES = (
    [{"name": f"pm25_lag{k}", "unit": "µg/m³",
      "meaning": f"PM2.5 hourly mean {k} hour{'s' if k > 1 else ''} before the hour being nowcast"}
     for k in range(1, NOWCAST_LAGS + 1)]
    + [
        {"name": "dewp", "unit": "°C", "meaning": "dew point for the hour being nowcast"},
        {"name": "temp", "unit": "°C", "meaning": "air temperature for the hour being nowcast"},
        {"name": "pres", "unit": "hPa", "meaning": "air pressure for the hour being nowcast"},
        {"name": "iws", "unit": "m/s",
         "meaning": "cumulated wind speed (UCI 'Iws': wind speed summed over consecutive hours "
                    "with an unchanged wind direction) for the hour being nowcast"},
        {"name": "hour_sin", "unit": "1",
         "meaning": "sin(2*pi*h/24), h = local hour of day (0-23, China Standard Time UTC+8 "
                    "in the training data) of the hour being nowcast"},
        {"name": "hour_cos", "unit": "1", "meaning": "cos(2*pi*h/24), same h as hour_sin"},
    ]
)


def nowcast_features(df):
    pm = df["pm2.5"].to_numpy(np.float64)
    n = len(pm)
    lags = np.full((n, NOWCAST_LAGS), np.nan)
    for k in range(1, NOWCAST_LAGS + 1):
        lags[k:, k - 1] = pm[:-k]
    h = df["hour"].to_numpy(np.float64)
    X = np.column_stack([
        lags,
        df["DEWP"].to_numpy(np.float64),
        df["TEMP"].to_numpy(np.float64),
        df["PRES"].to_numpy(np.float64),
        df["Iws"].to_numpy(np.float64),
        np.sin(2 * np.pi * h / 24.0),
        np.cos(2 * np.pi * h / 24.0),
    ])
    ok = ~np.isnan(X).any(axis=1) & ~np.isnan(pm)
    return X, pm, ok


def reg_metrics(pred, y):
    e = np.asarray(pred, np.float64).ravel() - np.asarray(y, np.float64).ravel()
    return {"mae": rnd(np.mean(np.abs(e))), "rmse": rnd(np.sqrt(np.mean(e ** 2))),
            "bias": rnd(np.mean(e)), "n": int(e.size)}


def build_nowcast(data_dir, out_dir):
    name = "pm25_nowcast"
    csv = data_dir / "beijing_pm25_hourly.csv"
    step(f"{name}: reading {csv}")
    df = pd.read_csv(csv, na_values=["NA"])
    ts = pd.to_datetime(df[["year", "month", "day", "hour"]])
    if not (ts.diff().dropna() == pd.Timedelta(hours=1)).all():
        raise SystemExit("FATAL: Beijing file is not a gap-free hourly sequence")
    info(f"{len(df)} rows {ts.iloc[0]} .. {ts.iloc[-1]}, PM2.5 NA in {int(df['pm2.5'].isna().sum())} rows")

    step(f"{name}: building windows (last {NOWCAST_LAGS} h of PM2.5 + weather), skipping any with NA")
    X, y, ok = nowcast_features(df)
    year = df["year"].to_numpy()
    tr = ok & (year <= 2012)
    va = ok & (year == 2013)
    te = ok & (year == 2014)
    info(f"windows: usable {int(ok.sum())} of {len(df)}; train {int(tr.sum())} (2010-2012), "
         f"validation {int(va.sum())} (2013), test {int(te.sum())} (2014)")

    step(f"{name}: training candidates (Ridge grid, small MLPs), selecting on 2013 MAE")
    candidates = []
    for alpha in (0.1, 1.0, 10.0, 100.0):
        candidates.append((f"ridge(alpha={alpha})", "ridge",
                           Pipeline([("scaler", StandardScaler()), ("model", Ridge(alpha=alpha))])))
    for hidden in ((16,), (32,)):
        mlp = MLPRegressor(hidden_layer_sizes=hidden, activation="relu", solver="adam",
                           alpha=1e-3, batch_size=256, learning_rate_init=1e-3, max_iter=200,
                           tol=1e-6, n_iter_no_change=20, shuffle=True, random_state=SEED)
        candidates.append((f"mlp(hidden={list(hidden)})", "mlp",
                           Pipeline([("scaler", StandardScaler()), ("model", mlp)])))
    # MLPs train on y/100 (better conditioned); the 100 is folded back into the last layer.
    y_scale = 100.0
    results = []
    for label, kind, pipe in candidates:
        t = time.time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            if kind == "mlp":
                pipe.fit(X[tr], y[tr] / y_scale)
                m = pipe.named_steps["model"]
                m.coefs_[-1] = m.coefs_[-1] * y_scale
                m.intercepts_[-1] = m.intercepts_[-1] * y_scale
            else:
                pipe.fit(X[tr], y[tr])
        mv = reg_metrics(pipe.predict(X[va]), y[va])
        results.append((mv["mae"], label, kind, pipe, mv))
        extra = f", {pipe.named_steps['model'].n_iter_} epochs" if kind == "mlp" else ""
        info(f"{label:22s} val MAE {mv['mae']:.3f} RMSE {mv['rmse']:.3f} ({time.time() - t:.1f}s{extra})")
    results.sort(key=lambda r: (r[0], r[1]))
    _, best_label, best_kind, best, _ = results[0]
    info(f"selected: {best_label}")

    step(f"{name}: exporting to ONNX (opset {OPSET}, standard domain only)")
    onx = to_onnx(best, X[:1].astype(np.float32),
                  initial_types=[("input", FloatTensorType([None, X.shape[1]]))],
                  final_types=[("pm25", FloatTensorType([None, 1]))],
                  target_opset={"": OPSET}, black_op={"Scaler", "LinearRegressor"})
    onx = finalize_model(onx, "Aeris PM2.5 nowcast: input [N,12] float32 -> pm25 [N,1] µg/m³. "
                              "See manifest.json.")
    ops = verify_standard_ops(onx, name)
    mdir = out_dir / name
    mdir.mkdir(parents=True, exist_ok=True)
    mpath = mdir / "model.onnx"
    mpath.write_bytes(onx.SerializeToString())
    size = mpath.stat().st_size
    if size > 1_000_000:
        raise SystemExit(f"FATAL: {mpath} is {size} bytes")
    info(f"wrote {mpath} ({size} bytes)")

    step(f"{name}: evaluating the exported graph with onnxruntime vs persistence")
    sess = ort_session(mpath)
    p_ort = {s: ort_run(sess, X[m]).ravel() for s, m in (("val", va), ("test", te))}
    p_skl = best.predict(X[te])
    skl_diff = float(np.max(np.abs(p_ort["test"] - p_skl)))
    info(f"max |onnxruntime - sklearn| on test = {skl_diff:.3g} µg/m³")
    metrics = {}
    for s, m in (("validation_2013", va), ("test_2014", te)):
        key = "val" if s.startswith("val") else "test"
        metrics[s] = {
            "model": reg_metrics(p_ort[key], y[m]),
            "baseline_persistence": reg_metrics(X[m, 0], y[m]),
        }
    mt, bt = metrics["test_2014"]["model"], metrics["test_2014"]["baseline_persistence"]
    info(f"test 2014: model MAE {mt['mae']:.3f} RMSE {mt['rmse']:.3f} | persistence MAE "
         f"{bt['mae']:.3f} RMSE {bt['rmse']:.3f} (n={mt['n']})")

    scaler = best.named_steps["scaler"]
    tol_tv = {"abs": 1e-3, "rel": 1e-4}
    manifest = {
        "name": name,
        "version": MODEL_VERSION,
        "description": "PM2.5 nowcast / gap-filler for one fixed-site sensor: estimates the current "
                       "hour's PM2.5 from the previous 6 hourly PM2.5 values and the current "
                       "hour's weather. Use it to fill a missing hour or to cross-check a reading. "
                       "For a run of missing hours feed earlier nowcasts back in as lags (quality "
                       "degrades with every step).",
        "file": "model.onnx",
        "sha256": sha256_file(mpath),
        "size_bytes": size,
        "format": {"onnx_ir_version": IR_VERSION, "opset": {"": OPSET},
                   "domains_used": [""], "ops": ops,
                   "note": "standard ONNX domain only (no ai.onnx.ml), loadable by tract-onnx 0.23"},
        "model_type": best_label,
        "inputs": [{
            "name": "input", "dtype": "float32", "shape": ["N", X.shape[1]],
            "shape_note": "batch dimension N is symbolic in the file; tract loads the model with a "
                          "fixed shape, e.g. [1, 12] or [64, 12]",
            "features": [dict(index=i, **f) for i, f in enumerate(NOWCAST_FEATURES)],
            "requirements": "all 12 values finite; no NA (a window with a missing lag cannot be scored)",
        }],
        "normalisation": {
            "baked_into_graph": True,
            "method": "standard scaling (x - mean) / scale, as Sub and Div nodes at the start of the graph; "
                      "feed raw physical values",
            "mean": [float(v) for v in scaler.mean_],
            "scale": [float(v) for v in scaler.scale_],
        },
        "outputs": [{
            "name": "pm25", "dtype": "float32", "shape": ["N", 1], "unit": "µg/m³",
            "meaning": "estimated PM2.5 hourly mean for the hour being nowcast (not clipped; may be "
                       "slightly negative at very low concentrations, clamp at 0 for display)",
        }],
        "tolerance": {
            "shadow_vs_active": {"abs": 5.0, "unit": "µg/m³",
                                 "rule": "a shadow model agrees with the active one when "
                                         "|shadow - active| <= 5 µg/m³ (about 40% of the test MAE)"},
            "test_vectors": dict(tol_tv, note="tract vs onnxruntime numerical agreement, "
                                              "|a - e| <= abs + rel*|e|"),
        },
        "training_data": {
            "file": "beijing_pm25_hourly.csv",
            "sha256": sha256_file(csv),
            "source": "UCI Beijing PM2.5 (Liang et al. 2015), US embassy Beijing, 2010-2014",
            "rows_in_file": int(len(df)),
            "rows_pm25_na": int(df["pm2.5"].isna().sum()),
            "windows_usable": int(ok.sum()),
            "rows_used": {"train": int(tr.sum()), "validation": int(va.sum()), "test": int(te.sum())},
            "na_handling": "a window is skipped when the target or any of the 6 lags is NA",
        },
        "split": {"type": "chronological", "train": "2010-01-01..2012-12-31",
                  "validation": "2013-01-01..2013-12-31 (model selection only)",
                  "test": "2014-01-01..2014-12-31 (reported once)",
                  "final_fit": "train years only"},
        "model_selection": {"criterion": "validation MAE",
                            "candidates": [{"model": r[1], "validation": r[4]} for r in results]},
        "metrics": dict(metrics, note="computed from the exported ONNX graph with onnxruntime; "
                                      "baseline_persistence = last hour's PM2.5 (pm25_lag1)"),
        "seed": SEED,
        "built_with": env_versions(),
    }
    write_json(mdir / "manifest.json", manifest)

    step(f"{name}: writing test vectors")
    rng = np.random.default_rng(SEED)
    te_idx = np.flatnonzero(te)
    n_real = N_TEST_VECTORS - 8
    pick = np.sort(rng.choice(te_idx, size=n_real - 2, replace=False))
    # make sure the most extreme test hours are in
    hi = te_idx[np.argmax(y[te_idx])]
    big_jump = te_idx[np.argmax(np.abs(y[te_idx] - X[te_idx, 0]))]
    pick = np.concatenate([pick, [hi, big_jump]])
    rows = [X[i] for i in pick]
    notes = [f"Beijing {ts.iloc[i]:%Y-%m-%d %H}:00, observed PM2.5 {y[i]:g}" for i in pick]
    notes[-2] += " (highest PM2.5 in test year)"
    notes[-1] += " (largest hour-to-hour jump in test year)"

    def hour_feats(h):
        return [np.sin(2 * np.pi * h / 24), np.cos(2 * np.pi * h / 24)]
    edge = [
        ([0] * 6 + [-20, -10, 1030, 1.0] + hour_feats(3), "synthetic: clean air, cold dry night"),
        ([994] * 6 + [-5, -2, 1030, 0.9] + hour_feats(22), "synthetic: stuck at the data set's max"),
        ([500, 400, 300, 200, 100, 50, -10, 0, 1035, 20.0] + hour_feats(12), "synthetic: rapid rise"),
        ([20, 60, 150, 300, 450, 500, -15, -5, 1040, 300.0] + hour_feats(9),
         "synthetic: rapid fall under strong NW wind"),
        ([80] * 6 + [25, 35, 1000, 1.8] + hour_feats(15), "synthetic: hot humid afternoon"),
        ([35, 36, 37, 38, 39, 40, 0, 10, 1016, 5.0] + hour_feats(0), "synthetic: slow rise, midnight"),
        ([1, 2, 1, 2, 1, 2, -40, 42, 991, 585.6] + hour_feats(18), "synthetic: weather extremes"),
        ([150, 150, 150, 150, 150, 150, 0, 12, 1016, 24] + hour_feats(6),
         "synthetic: flat 150 at training-mean weather"),
    ]
    rows += [np.array(r, dtype=np.float64) for r, _ in edge]
    notes += [n for _, n in edge]
    write_test_vectors(mdir / "test_vectors.json", name, mpath, sess, np.array(rows), notes,
                       tol_tv, "pm25", "estimated PM2.5 for the hour being nowcast, µg/m³")
    return {"name": name, "size": size, "sha256": manifest["sha256"],
            "model": best_label, "metrics": metrics}


# --------------------------------------------------------------------------
# (b) pm_anomaly
# --------------------------------------------------------------------------

ANOM_HIST = 7          # previous days
ANOM_WIDTH = ANOM_HIST + 1
STUCK_EPS = 0.05       # µg/m³: |day-to-day change| below this counts as "unchanged"
STUCK_DIFFS = 3        # how many of the latest day-to-day changes are checked
BASE_STD_FLOOR = 1.0   # µg/m³, floor of the baseline's std
BASE_RULE_Z = 3.0
ANOM_FEATURES = (
    [{"name": f"pm10_d{k}", "unit": "µg/m³", "meaning": f"daily mean PM10 {k} day{'s' if k > 1 else ''} "
      f"before the reading being scored (same station)"} for k in range(ANOM_HIST, 0, -1)]
    + [{"name": "pm10_d0", "unit": "µg/m³", "meaning": "the daily mean PM10 reading being scored"}]
)


def station_series(df):
    out = {}
    for st, g in df.groupby("station", sort=True):
        s = g.set_index("date")["PM10"].sort_index()
        out[st] = s.asfreq("D")
    return out


def inject_faults(vals, rng, p_spike=0.01, p_stuck=0.004):
    """Synthetic faults: 1 = spike (x3..x10 plus 0..20 µg/m³), 2 = stuck (previous value
    repeated for 3..10 days).  Faults are kept apart by at least one window length."""
    v = vals.copy()
    lab = np.zeros(len(v), dtype=np.int64)
    n, t = len(v), ANOM_WIDTH
    while t < n:
        r = rng.random()
        if r < p_spike and not np.isnan(v[t]):
            v[t] = v[t] * rng.uniform(3.0, 10.0) + rng.uniform(0.0, 20.0)
            lab[t] = 1
            t += ANOM_WIDTH
        elif r < p_spike + p_stuck and not np.isnan(v[t - 1]):
            run = int(rng.integers(3, 11))
            for k in range(run):
                if t + k < n and not np.isnan(v[t + k]):
                    v[t + k] = v[t - 1]
                    lab[t + k] = 2
            t += run + ANOM_WIDTH
        else:
            t += 1
    return v, lab


def anomaly_windows(series, y0, y1, rng=None):
    Xs, Ls, meta = [], [], []
    for st, s in series.items():
        ss = s[(s.index.year >= y0) & (s.index.year <= y1)]
        vals = ss.to_numpy(np.float64)
        if len(vals) < ANOM_WIDTH:
            continue
        if rng is not None:
            vals, lab = inject_faults(vals, rng)
        else:
            lab = np.zeros(len(vals), dtype=np.int64)
        idx = np.arange(ANOM_HIST, len(vals))
        M = np.stack([vals[idx - ANOM_HIST + k] for k in range(ANOM_WIDTH)], axis=1)
        ok = ~np.isnan(M).any(axis=1)
        Xs.append(M[ok])
        Ls.append(lab[idx][ok])
        dates = ss.index[idx[ok]]
        meta += [(st, d) for d in dates]
    return np.concatenate(Xs), np.concatenate(Ls), meta


def baseline_z(X):
    m = X[:, :ANOM_HIST].mean(axis=1)
    s = X[:, :ANOM_HIST].std(axis=1)
    return np.abs(X[:, ANOM_HIST] - m) / np.maximum(s, BASE_STD_FLOOR)


def detect_metrics(score, lab, thr):
    pos = lab > 0
    flag = score > thr
    tp = int(np.sum(flag & pos))
    fp = int(np.sum(flag & ~pos))
    out = {
        "auc": rnd(roc_auc_score(pos, score)),
        "auc_spike": rnd(roc_auc_score(lab[lab != 2] > 0, score[lab != 2])),
        "auc_stuck": rnd(roc_auc_score(lab[lab != 1] > 0, score[lab != 1])),
        "threshold": rnd(thr),
        "precision": rnd(tp / max(tp + fp, 1)),
        "recall": rnd(tp / max(int(pos.sum()), 1)),
        "recall_spike": rnd(np.mean(flag[lab == 1])),
        "recall_stuck": rnd(np.mean(flag[lab == 2])),
        "false_positive_rate": rnd(fp / max(int((~pos).sum()), 1)),
    }
    return out


def build_anomaly_graph(mu, sd, coef, intercept, sigma, w_stuck):
    """input [N,8] -> score [N,1], standard ONNX ops only (Relu, Add, Log, MatMul, Sub,
    Div, Abs, Mul).  Column selections are MatMuls with 0/1 matrices (exact)."""
    f32 = np.float32
    sel_hist = np.zeros((ANOM_WIDTH, ANOM_HIST), f32)
    sel_hist[np.arange(ANOM_HIST), np.arange(ANOM_HIST)] = 1
    sel_cur = np.zeros((ANOM_WIDTH, 1), f32)
    sel_cur[ANOM_HIST, 0] = 1
    # columns: x[t]-x[t-1], x[t-1]-x[t-2], x[t-2]-x[t-3]
    diff = np.zeros((ANOM_WIDTH, STUCK_DIFFS), f32)
    for j in range(STUCK_DIFFS):
        diff[ANOM_HIST - j, j] = 1
        diff[ANOM_HIST - j - 1, j] = -1
    inits = [
        numpy_helper.from_array(np.array(1.0, f32), "one"),
        numpy_helper.from_array(sel_hist, "select_history"),
        numpy_helper.from_array(sel_cur, "select_current"),
        numpy_helper.from_array(np.asarray(mu, f32).reshape(1, -1), "history_mean"),
        numpy_helper.from_array(np.asarray(sd, f32).reshape(1, -1), "history_scale"),
        numpy_helper.from_array(np.asarray(coef, f32).reshape(-1, 1), "ridge_coef"),
        numpy_helper.from_array(np.array([intercept], f32), "ridge_intercept"),
        numpy_helper.from_array(np.array([sigma], f32), "residual_sigma"),
        numpy_helper.from_array(diff, "day_diff"),
        numpy_helper.from_array(np.array([STUCK_EPS], f32), "stuck_eps"),
        numpy_helper.from_array(np.eye(STUCK_DIFFS, dtype=f32)[:, 0:1], "select_change0"),
        numpy_helper.from_array(np.eye(STUCK_DIFFS, dtype=f32)[:, 1:2], "select_change1"),
        numpy_helper.from_array(np.eye(STUCK_DIFFS, dtype=f32)[:, 2:3], "select_change2"),
        numpy_helper.from_array(np.array([w_stuck], f32), "stuck_weight"),
    ]
    N = helper.make_node
    nodes = [
        # log1p of the non-negative part
        N("Relu", ["input"], ["x_pos"], name="clamp_negative"),
        N("Add", ["x_pos", "one"], ["x_p1"], name="plus_one"),
        N("Log", ["x_p1"], ["logx"], name="log1p"),
        # forecast of log1p(today) from standardised log1p(history)
        N("MatMul", ["logx", "select_history"], ["hist"], name="take_history"),
        N("Sub", ["hist", "history_mean"], ["hist_c"], name="standardise_sub"),
        N("Div", ["hist_c", "history_scale"], ["hist_z"], name="standardise_div"),
        N("MatMul", ["hist_z", "ridge_coef"], ["fc0"], name="ridge_matmul"),
        N("Add", ["fc0", "ridge_intercept"], ["forecast_log"], name="ridge_add"),
        N("MatMul", ["logx", "select_current"], ["cur_log"], name="take_current"),
        N("Sub", ["cur_log", "forecast_log"], ["resid"], name="residual"),
        N("Div", ["resid", "residual_sigma"], ["resid_z"], name="residual_standardise"),
        N("Abs", ["resid_z"], ["resid_score"], name="residual_abs"),
        # stuck-value evidence: soft length of the run of unchanged days ending today, in [0, 3]
        # u_j = relu(1 - |change_j| / eps), run = u0 + u0*u1 + u0*u1*u2
        N("MatMul", ["input", "day_diff"], ["diffs"], name="day_to_day_change"),
        N("Abs", ["diffs"], ["abs_diffs"], name="abs_change"),
        N("Div", ["abs_diffs", "stuck_eps"], ["rel_diffs"], name="change_over_eps"),
        N("Sub", ["one", "rel_diffs"], ["one_minus"], name="one_minus"),
        N("Relu", ["one_minus"], ["unchanged"], name="unchanged_indicator"),
        N("MatMul", ["unchanged", "select_change0"], ["u0"], name="take_u0"),
        N("MatMul", ["unchanged", "select_change1"], ["u1"], name="take_u1"),
        N("MatMul", ["unchanged", "select_change2"], ["u2"], name="take_u2"),
        N("Mul", ["u0", "u1"], ["u01"], name="run_len2"),
        N("Mul", ["u01", "u2"], ["u012"], name="run_len3"),
        N("Add", ["u0", "u01"], ["run_a"], name="run_sum_a"),
        N("Add", ["run_a", "u012"], ["stuck_run"], name="run_sum_b"),
        N("Mul", ["stuck_run", "stuck_weight"], ["stuck_score"], name="stuck_weight_mul"),
        N("Add", ["resid_score", "stuck_score"], ["score"], name="score"),
    ]
    graph = helper.make_graph(
        nodes, "pm_anomaly",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", ANOM_WIDTH])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    return model


def build_anomaly(data_dir, out_dir):
    name = "pm_anomaly"
    csv = data_dir / "de_rural_pm10_daily.csv"
    step(f"{name}: reading {csv}")
    df = pd.read_csv(csv, parse_dates=["date"])
    stations = pd.read_csv(data_dir / "de_rural_pm10_stations.csv")
    series = station_series(df)
    info(f"{len(df)} station-days, {len(series)} stations ({len(stations)} in the station file), "
         f"{df['date'].min():%Y-%m-%d} .. {df['date'].max():%Y-%m-%d}")

    step(f"{name}: building 8-day windows; train 1998-2005 clean, "
         f"validation 2006-2007 and test 2008-2009 with injected faults")
    Xtr, _, _ = anomaly_windows(series, 1998, 2005)
    rng_val = np.random.default_rng(SEED + 1)
    rng_test = np.random.default_rng(SEED + 2)
    Xva, lva, _ = anomaly_windows(series, 2006, 2007, rng_val)
    Xte, lte, meta_te = anomaly_windows(series, 2008, 2009, rng_test)
    for lbl, L in (("validation", lva), ("test", lte)):
        c = np.bincount(L, minlength=3)
        info(f"{lbl}: {len(L)} windows, clean {c[0]}, spike {c[1]}, stuck {c[2]}")
    info(f"train: {len(Xtr)} clean windows")

    step(f"{name}: fitting the log-space one-day-ahead forecast (Ridge) and residual scale")
    Ltr = np.log1p(np.maximum(Xtr, 0))
    scaler = StandardScaler().fit(Ltr[:, :ANOM_HIST])
    ridge = Ridge(alpha=1.0).fit(scaler.transform(Ltr[:, :ANOM_HIST]), Ltr[:, ANOM_HIST])
    res = Ltr[:, ANOM_HIST] - ridge.predict(scaler.transform(Ltr[:, :ANOM_HIST]))
    sigma = float(1.4826 * np.median(np.abs(res - np.median(res))))
    info(f"ridge coef {np.round(ridge.coef_, 4).tolist()} intercept {ridge.intercept_:.4f}; "
         f"residual sigma (1.4826*MAD) {sigma:.4f} (plain std {res.std():.4f})")

    def score_np(X, w):
        L = np.log1p(np.maximum(X, 0))
        z = (L[:, ANOM_HIST] - ridge.predict(scaler.transform(L[:, :ANOM_HIST]))) / sigma
        d = np.abs(np.diff(X, axis=1))[:, ::-1][:, :STUCK_DIFFS]  # newest change first
        u = np.maximum(0, 1 - d / STUCK_EPS)
        return np.abs(z) + w * np.cumprod(u, axis=1).sum(axis=1)

    step(f"{name}: choosing the stuck-value weight on validation recall at 1% FPR")
    grid = [1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0]
    sel = []
    for w in grid:
        sv = score_np(Xva, w)
        auc = roc_auc_score(lva > 0, sv)
        thr_w = np.quantile(sv[lva == 0], 0.99)
        rec = float(np.mean(sv[lva > 0] > thr_w))
        sel.append({"stuck_weight": w, "validation_recall_at_1pct_fpr": rnd(rec),
                    "validation_auc": rnd(auc)})
        info(f"w={w:<4} validation recall@1%FPR {rec:.4f} AUC {auc:.4f}")
    w_best = max(sel, key=lambda r: (r["validation_recall_at_1pct_fpr"], r["validation_auc"],
                                     -r["stuck_weight"]))["stuck_weight"]
    info(f"selected stuck weight {w_best}")

    step(f"{name}: building the ONNX graph by hand (opset {OPSET}, standard domain only)")
    onx = build_anomaly_graph(scaler.mean_, scaler.scale_, ridge.coef_, ridge.intercept_,
                              sigma, w_best)
    onx = finalize_model(onx, "Aeris PM10 anomaly score: input [N,8] float32 (7 previous days + "
                              "today, µg/m³) -> score [N,1]. See manifest.json.")
    ops = verify_standard_ops(onx, name)
    mdir = out_dir / name
    mdir.mkdir(parents=True, exist_ok=True)
    mpath = mdir / "model.onnx"
    mpath.write_bytes(onx.SerializeToString())
    size = mpath.stat().st_size
    if size > 1_000_000:
        raise SystemExit(f"FATAL: {mpath} is {size} bytes")
    info(f"wrote {mpath} ({size} bytes)")

    step(f"{name}: evaluating the exported graph with onnxruntime vs the z-score rule")
    sess = ort_session(mpath)
    s_va = ort_run(sess, Xva).ravel()
    s_te = ort_run(sess, Xte).ravel()
    diff = float(np.max(np.abs(s_te - score_np(Xte, w_best))))
    info(f"max |onnxruntime - numpy float64| on test = {diff:.3g}")
    thr = float(np.quantile(s_va[lva == 0], 0.99))
    b_va, b_te = baseline_z(Xva), baseline_z(Xte)
    b_thr_cal = float(np.quantile(b_va[lva == 0], 0.99))
    metrics = {
        "validation_2006_2007": {
            "model": detect_metrics(s_va, lva, thr),
            "baseline_zscore_rule_z3": detect_metrics(b_va, lva, BASE_RULE_Z),
            "baseline_zscore_at_1pct_fpr": detect_metrics(b_va, lva, b_thr_cal),
        },
        "test_2008_2009": {
            "model": detect_metrics(s_te, lte, thr),
            "baseline_zscore_rule_z3": detect_metrics(b_te, lte, BASE_RULE_Z),
            "baseline_zscore_at_1pct_fpr": detect_metrics(b_te, lte, b_thr_cal),
        },
    }
    # forecast quality of the internal one-day-ahead forecast on clean test windows
    Xte_clean, _, _ = anomaly_windows(series, 2008, 2009)
    Lc = np.log1p(np.maximum(Xte_clean, 0))
    fc = np.expm1(ridge.predict(scaler.transform(Lc[:, :ANOM_HIST])))
    metrics["forecast_test_2008_2009_clean"] = {
        "ridge_log_forecast": reg_metrics(fc, Xte_clean[:, ANOM_HIST]),
        "baseline_persistence": reg_metrics(Xte_clean[:, ANOM_HIST - 1], Xte_clean[:, ANOM_HIST]),
    }
    mt = metrics["test_2008_2009"]["model"]
    bt = metrics["test_2008_2009"]["baseline_zscore_rule_z3"]
    bc = metrics["test_2008_2009"]["baseline_zscore_at_1pct_fpr"]
    info(f"test: model AUC {mt['auc']:.4f} P {mt['precision']:.3f} R {mt['recall']:.3f} "
         f"FPR {mt['false_positive_rate']:.4f} (thr {thr:.3f})")
    info(f"test: z-score z>3 AUC {bt['auc']:.4f} P {bt['precision']:.3f} R {bt['recall']:.3f} "
         f"FPR {bt['false_positive_rate']:.4f}; at 1% val FPR: P {bc['precision']:.3f} R {bc['recall']:.3f}")

    tol_tv = {"abs": 1e-4, "rel": 1e-4}
    manifest = {
        "name": name,
        "version": MODEL_VERSION,
        "description": "Sensor-fault / anomaly score for one daily PM10 reading given the same "
                       "station's previous 7 days. score = |log1p(today) - ridge forecast| / sigma "
                       f"+ {w_best} * run, where run (0..3) is the soft length of the run of "
                       f"unchanged days ending today (a day-to-day change below {STUCK_EPS} µg/m³ "
                       "counts as unchanged; u = relu(1 - |change|/eps), run = u0 + u0*u1 + "
                       "u0*u1*u2, u0 = today vs yesterday). The first term catches spikes and "
                       "drops, the second stuck (repeated) values. Higher = more anomalous.",
        "file": "model.onnx",
        "sha256": sha256_file(mpath),
        "size_bytes": size,
        "format": {"onnx_ir_version": IR_VERSION, "opset": {"": OPSET},
                   "domains_used": [""], "ops": ops,
                   "note": "hand-built with onnx.helper; standard ONNX domain only (no ai.onnx.ml), "
                           "loadable by tract-onnx 0.23"},
        "model_type": "ridge one-day-ahead forecast in log1p space + robust residual z + stuck-value term",
        "inputs": [{
            "name": "input", "dtype": "float32", "shape": ["N", ANOM_WIDTH],
            "shape_note": "batch dimension N is symbolic in the file; tract loads the model with a "
                          "fixed shape, e.g. [1, 8] or [64, 8]",
            "features": [dict(index=i, **f) for i, f in enumerate(ANOM_FEATURES)],
            "requirements": "8 consecutive days of the same station, oldest first, all finite; "
                            "negative values are clamped to 0 inside the graph for the forecast term",
        }],
        "normalisation": {
            "baked_into_graph": True,
            "method": "log1p(max(x,0)) of the 7 history days, then (v - mean) / scale as Sub and Div "
                      "nodes; the residual is divided by residual_sigma. Feed raw µg/m³.",
            "mean": [float(v) for v in scaler.mean_],
            "scale": [float(v) for v in scaler.scale_],
            "applies_to": "log1p(pm10_d7..pm10_d1)",
            "residual_sigma": sigma,
            "ridge_coef": [float(v) for v in ridge.coef_],
            "ridge_intercept": float(ridge.intercept_),
            "stuck_eps_ugm3": STUCK_EPS,
            "stuck_weight": w_best,
        },
        "outputs": [{
            "name": "score", "dtype": "float32", "shape": ["N", 1], "unit": "1 (dimensionless)",
            "meaning": "anomaly score of pm10_d0; >= 0, higher = more likely a sensor fault",
            "decision_threshold": rnd(thr),
            "decision_threshold_note": "99th percentile of clean validation windows (target 1% "
                                       "false-positive rate); flag when score > threshold",
        }],
        "tolerance": {
            "shadow_vs_active": {"abs": 0.5, "unit": "score units",
                                 "rule": "a shadow model agrees with the active one when "
                                         "|shadow - active| <= 0.5 and both give the same decision "
                                         "at decision_threshold"},
            "test_vectors": dict(tol_tv, note="tract vs onnxruntime numerical agreement, "
                                              "|a - e| <= abs + rel*|e|"),
        },
        "training_data": {
            "file": "de_rural_pm10_daily.csv",
            "sha256": sha256_file(csv),
            "stations_file": "de_rural_pm10_stations.csv",
            "source": "EEA AirBase daily PM10, 70 rural background stations in Germany, 1998-2009",
            "rows_in_file": int(len(df)),
            "stations": len(series),
            "windows_used": {"train": int(len(Xtr)), "validation": int(len(Xva)), "test": int(len(Xte))},
            "window_rule": "8 consecutive calendar days of one station, all with a value",
        },
        "split": {"type": "chronological, all stations", "train": "1998-2005 (clean, real data)",
                  "validation": "2006-2007 with injected faults (stuck weight and threshold)",
                  "test": "2008-2009 with injected faults (reported once)"},
        "fault_injection": {
            "seeds": {"validation": SEED + 1, "test": SEED + 2},
            "spike": "reading * U(3,10) + U(0,20) µg/m³ at a random day (p=1% per day)",
            "stuck": "previous day's value repeated for 3..10 days (p=0.4% per day); every stuck day is a positive",
            "negatives": "all other windows, including real data that may hold real anomalies and "
                         "windows whose history (not the scored day) contains a fault",
        },
        "baseline": f"z-score rule: |x_d0 - mean(d7..d1)| / max(std(d7..d1), {BASE_STD_FLOOR} µg/m³), "
                    f"flag at z > {BASE_RULE_Z}; also shown with its threshold calibrated to 1% "
                    f"validation FPR ({b_thr_cal:.3f})",
        "model_selection": {"criterion": "validation recall at the 1%-FPR threshold over stuck_weight "
                                         "(then AUC)", "candidates": sel},
        "metrics": dict(metrics, note="detection metrics from the exported ONNX graph with onnxruntime; "
                                      "precision/recall at the decision threshold"),
        "seed": SEED,
        "built_with": env_versions(),
    }
    write_json(mdir / "manifest.json", manifest)

    step(f"{name}: writing test vectors")
    rng = np.random.default_rng(SEED + 3)
    picks = []
    for lbl, k in ((0, 80), (1, 20), (2, 20)):
        idx = np.flatnonzero(lte == lbl)
        picks += sorted(rng.choice(idx, size=k, replace=False).tolist())
    kind = {0: "clean", 1: "injected spike", 2: "injected stuck"}
    rows = [Xte[i] for i in picks]
    notes = [f"{meta_te[i][0]} {meta_te[i][1]:%Y-%m-%d}, {kind[int(lte[i])]}" for i in picks]
    edge = [
        ([0.0] * 8, "synthetic: all zero (stuck at zero)"),
        ([10, 12, 11, 13, 12, 14, 13, 0], "synthetic: sudden drop to zero"),
        ([10, 12, 11, 13, 12, 14, 13, -5], "synthetic: negative reading"),
        ([15, 18, 20, 17, 16, 19, 21, 250], "synthetic: large spike"),
        ([20, 22, 25, 30, 30, 30, 30, 30], "synthetic: stuck for 4 days"),
        ([20, 22, 25, 30, 28, 26, 30, 30], "synthetic: one exact repeat"),
        ([20, 22, 25, 30, 28, 26, 30, 30.04], "synthetic: near-repeat inside eps"),
        ([5, 80, 5, 80, 5, 80, 5, 80], "synthetic: oscillating"),
    ]
    rows += [np.array(r, dtype=np.float64) for r, _ in edge]
    notes += [n for _, n in edge]
    write_test_vectors(mdir / "test_vectors.json", name, mpath, sess, np.array(rows), notes,
                       tol_tv, "score", "anomaly score of the last column (pm10_d0), dimensionless")
    return {"name": name, "size": size, "sha256": manifest["sha256"], "model": "ridge+stuck",
            "metrics": metrics, "threshold": thr}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None,
                    help="folder with the CSVs (default: ../../shared/data relative to this script)")
    ap.add_argument("--out", default=None, help="output folder (default: this script's folder)")
    ap.add_argument("--no-tract-check", action="store_true",
                    help="skip loading the exported models with the tract Python bindings")
    args = ap.parse_args()
    data_dir = Path(args.data).resolve() if args.data else (SCRIPT_DIR / ".." / ".." / "shared" / "data").resolve()
    out_dir = Path(args.out).resolve() if args.out else SCRIPT_DIR
    random.seed(SEED)
    np.random.seed(SEED)
    step(f"setup: data {data_dir}, output {out_dir}; " +
         ", ".join(f"{k} {v}" for k, v in env_versions().items()))
    for f in ("beijing_pm25_hourly.csv", "de_rural_pm10_daily.csv", "de_rural_pm10_stations.csv"):
        if not (data_dir / f).is_file():
            raise SystemExit(f"FATAL: {data_dir / f} not found (use --data)")
    results = [build_nowcast(data_dir, out_dir), build_anomaly(data_dir, out_dir)]
    if args.no_tract_check:
        step("tract check skipped (--no-tract-check)")
    elif tract is None:
        raise SystemExit("FATAL: the 'tract' package is missing (pip install -r requirements.txt), "
                         "or pass --no-tract-check")
    else:
        step("checking every model with tract (the Rust runtime's engine) at fixed input shapes")
        for r in results:
            tract_check(out_dir / r["name"], r["name"])
    step("done")
    for r in results:
        info(f"{r['name']}: {r['size']} bytes sha256 {r['sha256']}")


if __name__ == "__main__":
    main()
