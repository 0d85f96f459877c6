//! The OpenAPI schemas of the API's own string-shaped types. The ledger's and the
//! prover's types describe their own JSON shapes (their `openapi` feature, which this
//! crate turns on: `#[derive(ToSchema)]` where serde's derive says the shape, a
//! written schema where a type serialises itself, such as a key or a digest as hex),
//! so the coordinator's document (`GET /openapi.json`) cannot drift from what serde
//! writes; the coordinator's `tests/http.rs` checks real bodies against it.

/// The patterns every string schema of the document uses.
pub use lupus_types::openapi::{DECIMAL, HEX32, HEX64};
use utoipa::PartialSchema;
use utoipa::ToSchema;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::{KnownFormat, RefOr, SchemaFormat};

impl PartialSchema for crate::types::B64 {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Byte)))
            .content_encoding("base64")
            .description(Some("Bytes as standard padded base64."))
            .into()
    }
}

impl ToSchema for crate::types::B64 {}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use lupus_prover::ops::OpKind as Real;
    use serde_json::Value;

    use super::*;

    /// The properties of each `oneOf` branch of an enum tagged by `tag`, by tag value.
    fn shapes(schema: RefOr<Schema>, tag: &str) -> BTreeMap<String, BTreeSet<String>> {
        let schema = serde_json::to_value(schema).unwrap();
        let mut out = BTreeMap::new();
        for branch in schema["oneOf"].as_array().unwrap() {
            let props = branch["properties"].as_object().unwrap();
            let name = props[tag]["enum"][0].as_str().unwrap().to_owned();
            out.insert(name, props.keys().cloned().collect());
        }
        out
    }

    #[test]
    fn every_operator_kind_is_described_with_its_fields() {
        let all = [
            Real::Embedding { vocab: 2, dim: 3 },
            Real::EmbeddingBackward { vocab: 2, dim: 3 },
            Real::Reshape { shape: vec![1, 2] },
            Real::MatMul {
                transpose_a: true,
                transpose_b: false,
            },
            Real::AddBias,
            Real::BiasBackward,
            Real::Add,
            Real::Relu,
            Real::ReluBackward,
            Real::AddPosition { seq: 4 },
            Real::AddPositionBackward { seq: 4, context: 8 },
            Real::LayerNorm { eps: 1e-5 },
            Real::LayerNormBackward,
            Real::AttentionScores { heads: 2, seq: 4 },
            Real::CausalSoftmax { seq: 4 },
            Real::AttentionValues { heads: 2, seq: 4 },
            Real::AttentionValuesBackward { heads: 2, seq: 4 },
            Real::CausalSoftmaxBackward { seq: 4 },
            Real::AttentionScoresBackward { heads: 2, seq: 4 },
            Real::SoftmaxCrossEntropy,
            Real::SoftmaxCrossEntropyBackward,
            Real::AdamWUpdate {
                lr: 0.1,
                beta1: 0.9,
                beta2: 0.99,
                eps: 1e-8,
                weight_decay: 0.0,
                step: 1,
            },
        ];
        let described = shapes(Real::schema(), "op");
        assert_eq!(described.len(), all.len());
        for kind in all {
            let json = serde_json::to_value(&kind).unwrap();
            let fields: BTreeSet<String> = json.as_object().unwrap().keys().cloned().collect();
            let Value::String(tag) = &json["op"] else {
                panic!("{json}");
            };
            assert_eq!(described.get(tag), Some(&fields), "{tag}");
        }
    }
}
