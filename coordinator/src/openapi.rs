//! The OpenAPI 3.1 document served at `/openapi.json`.
//!
//! Hand-written rather than derived (utoipa would need schema derives on the ledger and
//! prover types, which must stay free of HTTP concerns). Request and response bodies are
//! described by name; their fields are the `lupus-api` crate's `types` module, whose
//! docs are the reference. `tests/http.rs` checks that every route of the router is here.

/// The document.
pub const DOCUMENT: &str = r##"{
  "openapi": "3.1.0",
  "info": {
    "title": "Lupus coordinator",
    "version": "1",
    "description": "Volunteer training with verifiable work. Mutating requests (POST) are signed: headers Lupus-Key, Lupus-Timestamp, Lupus-Nonce, Lupus-Signature over 'lupus request v1\\n' METHOD, path with query, blake3(body) hex, timestamp (unix ms) and nonce, one per line (see the lupus-api crate, module sign). Errors are RFC 9457 application/problem+json."
  },
  "components": {
    "securitySchemes": {
      "lupusSignature": {"type": "apiKey", "in": "header", "name": "Lupus-Signature"}
    },
    "responses": {
      "Problem": {"description": "An RFC 9457 problem", "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}
    },
    "schemas": {
      "Problem": {"type": "object", "required": ["type", "title", "status", "detail"], "properties": {"type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"}, "detail": {"type": "string"}, "instance": {"type": "string"}}}
    }
  },
  "paths": {
    "/": {"get": {"summary": "The volunteer page", "responses": {"200": {"description": "HTML"}}}},
    "/checkpoint": {"get": {"summary": "C2SP tlog-checkpoint signed note", "responses": {"200": {"description": "text/plain"}}}},
    "/tile/{path}": {"get": {"summary": "C2SP tlog-tiles hash tile tile/<L>/<N>[.p/<W>] or entry bundle tile/entries/<N>[.p/<W>]", "parameters": [{"name": "path", "in": "path", "required": true, "schema": {"type": "string"}}], "responses": {"200": {"description": "application/octet-stream"}, "404": {"$ref": "#/components/responses/Problem"}}}},
    "/v1/job": {"get": {"summary": "JobInfo: the job spec, its hash, the dataset commitment and blob, the log key", "responses": {"200": {"description": "JobInfo"}}}},
    "/v1/join": {"post": {"summary": "JoinRequest -> JoinResponse: a key joins as a worker or a verifier", "security": [{"lupusSignature": []}], "responses": {"200": {"description": "JoinResponse"}, "400": {"$ref": "#/components/responses/Problem"}, "401": {"$ref": "#/components/responses/Problem"}, "409": {"$ref": "#/components/responses/Problem"}}}},
    "/v1/tasks/next": {"post": {"summary": "NextRequest ({}) -> TaskOffer", "security": [{"lupusSignature": []}], "responses": {"200": {"description": "TaskOffer"}, "401": {"$ref": "#/components/responses/Problem"}, "403": {"$ref": "#/components/responses/Problem"}}}},
    "/v1/tasks/{id}": {"get": {"summary": "TaskStatus", "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}}], "responses": {"200": {"description": "TaskStatus"}, "404": {"$ref": "#/components/responses/Problem"}}}},
    "/v1/tasks/{id}/submit": {"post": {"summary": "Submission -> SubmissionReceipt (the commitment is logged, then the challenge is derived)", "security": [{"lupusSignature": []}], "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}}], "responses": {"200": {"description": "SubmissionReceipt"}, "400": {"$ref": "#/components/responses/Problem"}, "401": {"$ref": "#/components/responses/Problem"}, "403": {"$ref": "#/components/responses/Problem"}, "404": {"$ref": "#/components/responses/Problem"}, "409": {"$ref": "#/components/responses/Problem"}, "413": {"$ref": "#/components/responses/Problem"}, "422": {"$ref": "#/components/responses/Problem"}}}},
    "/v1/tasks/{id}/opening": {"post": {"summary": "Opening (prover) -> OpeningReceipt", "security": [{"lupusSignature": []}], "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}}], "responses": {"200": {"description": "OpeningReceipt"}, "409": {"$ref": "#/components/responses/Problem"}, "422": {"$ref": "#/components/responses/Problem"}}}},
    "/v1/verify/next": {"post": {"summary": "NextRequest ({}) -> VerifyOffer", "security": [{"lupusSignature": []}], "responses": {"200": {"description": "VerifyOffer"}, "403": {"$ref": "#/components/responses/Problem"}}}},
    "/v1/verify/{id}/verdict": {"post": {"summary": "VerdictSubmission -> VerdictReceipt", "security": [{"lupusSignature": []}], "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}}], "responses": {"200": {"description": "VerdictReceipt"}, "403": {"$ref": "#/components/responses/Problem"}, "409": {"$ref": "#/components/responses/Problem"}, "422": {"$ref": "#/components/responses/Problem"}}}},
    "/v1/rounds": {"get": {"summary": "RoundList", "responses": {"200": {"description": "RoundList"}}}},
    "/v1/rounds/current": {"get": {"summary": "RoundStatus of the latest round", "responses": {"200": {"description": "RoundStatus"}, "404": {"$ref": "#/components/responses/Problem"}}}},
    "/v1/rounds/{n}": {"get": {"summary": "RoundStatus", "parameters": [{"name": "n", "in": "path", "required": true, "schema": {"type": "integer"}}], "responses": {"200": {"description": "RoundStatus"}, "404": {"$ref": "#/components/responses/Problem"}}}},
    "/v1/entries/{index}": {"get": {"summary": "EntryView: a log entry decoded to JSON", "parameters": [{"name": "index", "in": "path", "required": true, "schema": {"type": "integer"}}], "responses": {"200": {"description": "EntryView"}, "404": {"$ref": "#/components/responses/Problem"}}}},
    "/v1/proof/inclusion": {"get": {"summary": "RFC 9162 inclusion proof", "parameters": [{"name": "index", "in": "query", "required": true, "schema": {"type": "integer"}}, {"name": "size", "in": "query", "required": false, "schema": {"type": "integer"}}], "responses": {"200": {"description": "InclusionProof"}, "400": {"$ref": "#/components/responses/Problem"}}}},
    "/v1/proof/consistency": {"get": {"summary": "RFC 9162 consistency proof", "parameters": [{"name": "old", "in": "query", "required": true, "schema": {"type": "integer"}}, {"name": "new", "in": "query", "required": false, "schema": {"type": "integer"}}], "responses": {"200": {"description": "ConsistencyProof"}, "400": {"$ref": "#/components/responses/Problem"}}}},
    "/v1/stake": {"get": {"summary": "StakeTable: balances of the latest shares epoch", "responses": {"200": {"description": "StakeTable"}}}},
    "/v1/stake/{pubkey}": {"get": {"summary": "StakeStatement, verifiable offline with the log key", "parameters": [{"name": "pubkey", "in": "path", "required": true, "schema": {"type": "string"}}], "responses": {"200": {"description": "StakeStatement"}, "404": {"$ref": "#/components/responses/Problem"}}}},
    "/v1/blobs/{hash}": {"get": {"summary": "A content-addressed blob (model, dataset, opening) by blake3 hex", "parameters": [{"name": "hash", "in": "path", "required": true, "schema": {"type": "string"}}], "responses": {"200": {"description": "application/octet-stream"}, "404": {"$ref": "#/components/responses/Problem"}}}},
    "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI"}}}},
    "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text/plain"}}}}
  }
}"##;
