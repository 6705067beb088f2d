//! The part of a model's `manifest.json` the runtime relies on (the file
//! holds more: training data, split, metrics). Written by `models/train.py`.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    /// Hex sha256 of `model.onnx`.
    pub sha256: String,
    pub inputs: Vec<Input>,
    pub outputs: Vec<Output>,
    pub tolerance: Tolerance,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Input {
    pub name: String,
    /// The columns of the input tensor, in order.
    pub features: Vec<Feature>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Feature {
    pub name: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Output {
    pub name: String,
    /// A reading is flagged when the output exceeds this.
    #[serde(default)]
    pub decision_threshold: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Tolerance {
    pub shadow_vs_active: AbsTolerance,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AbsTolerance {
    pub abs: f64,
}

impl Manifest {
    /// The column names of the (single) input.
    pub fn feature_names(&self) -> Vec<&str> {
        self.inputs
            .first()
            .map(|i| i.features.iter().map(|f| f.name.as_str()).collect())
            .unwrap_or_default()
    }

    pub fn threshold(&self) -> Option<f64> {
        self.outputs.first().and_then(|o| o.decision_threshold)
    }

    /// The quantity name a model output travels under.
    pub fn output_quantity(&self) -> String {
        aeris_wire::message::model_quantity(&self.name, &self.version)
    }
}
