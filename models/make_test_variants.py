"""Variants of pm25_nowcast for the runtime's hot-swap tests (models/testdata/).

- pm25_nowcast_agree:    the same model with its intercept raised by 0.5 µg/m³
                          (version 1.0.1): within the 5 µg/m³ shadow tolerance.
- pm25_nowcast_disagree: intercept raised by 20 µg/m³ (version 1.1.0): outside it.

Each folder gets model.onnx and a manifest.json copied from the real model's
with the new version, sha256 and size. Deterministic: run it again and the
files are byte-identical.

    /tmp/aeris-models-venv/bin/python models/make_test_variants.py
"""
import hashlib
import json
import pathlib

import numpy as np
import onnx
from onnx import numpy_helper

HERE = pathlib.Path(__file__).resolve().parent
SRC = HERE / "pm25_nowcast"

for name, version, bias in [("pm25_nowcast_agree", "1.0.1", 0.5), ("pm25_nowcast_disagree", "1.1.0", 20.0)]:
    model = onnx.load(SRC / "model.onnx")
    for init in model.graph.initializer:
        if init.name == "intercept":
            value = numpy_helper.to_array(init).astype(np.float32) + np.float32(bias)
            init.CopyFrom(numpy_helper.from_array(value, "intercept"))
    out = HERE / "testdata" / name
    out.mkdir(parents=True, exist_ok=True)
    data = model.SerializeToString()
    (out / "model.onnx").write_bytes(data)
    manifest = json.loads((SRC / "manifest.json").read_text())
    manifest["version"] = version
    manifest["sha256"] = hashlib.sha256(data).hexdigest()
    manifest["size_bytes"] = len(data)
    manifest["description"] = f"TEST VARIANT: pm25_nowcast with intercept +{bias} µg/m³ (hot-swap tests only)"
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {out.relative_to(HERE)}: version {version}, intercept +{bias}, sha256 {manifest['sha256'][:16]}…")
