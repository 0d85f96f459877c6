//! The OpenAPI 3.1 document served at `/openapi.json`, generated with utoipa.
//!
//! Each handler of [`crate::routes`] carries a `#[utoipa::path]` (method, path,
//! parameters, request body, responses); the body types are `lupus-api`'s, which derive
//! `utoipa::ToSchema` (the ledger and prover types inside them describe themselves,
//! behind those crates' `openapi` feature, which `lupus-api` turns on). [`ApiDoc`] gathers
//! the paths, utoipa collects every schema they reference into `components.schemas`;
//! the problem answers are reusable `components.responses` ([`NotFound`], ...),
//! `SignedRequests` adds the request-signing headers as security schemes, and
//! `StaticFiles` the two routes a path annotation cannot describe.
//! `tests/http.rs` checks that every route of the router is here and answers, that no
//! `$ref` dangles, and that the bodies of a whole round match their schemas.

use lupus_prover::trace::{FinalLeaf, StepLeaf, TraceLeaf};
use std::sync::LazyLock;

use lupus_api::problem::{CONTENT_TYPE as PROBLEM, Problem};
use lupus_api::sign::{
    HEADER_CONTENT_HASH, HEADER_KEY, HEADER_NONCE, HEADER_SIGNATURE, HEADER_TIMESTAMP, MAX_SKEW_MS,
};
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Required, Response, ResponseBuilder};
use utoipa::{Modify, OpenApi, PartialSchema, ToResponse, ToSchema};

use crate::routes;

/// What the document says before the paths: the API's conventions.
const DESCRIPTION: &str = "\
Volunteer training with verifiable work (DESIGN.md, \"Coordinator\").

Keys, digests and hashes are hex, amounts decimal strings, binary payloads standard \
padded base64. Requests refuse unknown fields. Every error is an RFC 9457 \
`application/problem+json` body (schema `Problem`).

Mutating requests (every `POST`) are signed by the participant's Ed25519 key \
(lupus-api, module `sign`, scheme version 1). The client builds the canonical string, \
each line ended by `\\n`:

```text
lupus request v1
<METHOD>              upper case, e.g. POST
<path with query>     exactly as sent, e.g. /v1/tasks/7/submit
<blake3(body) hex>    64 lowercase hex digits (of the empty body if none)
<timestamp>           unix time in milliseconds, decimal, no leading zeroes
<nonce>               32 lowercase hex digits (16 random bytes)
```

signs it, and sends five headers: `Lupus-Key` (the public key, 64 lowercase hex \
digits), `Lupus-Timestamp`, `Lupus-Nonce`, `Lupus-Content-Hash` (the body's blake3 \
hash above) and `Lupus-Signature` (128 lowercase hex digits). The server checks the \
signature strictly (no small-order keys, no malleable signatures) before it reads the \
body, and the body against the declared hash after; it refuses a timestamp more than \
5 minutes from its clock (401), a key that has not joined in the role the route needs \
or was slashed (403, before the body is read) and a `(key, nonce)` pair it has \
already seen (409): a signed request is accepted once.";

// The description and the timestamp header's say "5 minutes".
const _: () = assert!(MAX_SKEW_MS == 5 * 60 * 1000);

/// The document's paths and schemas, from the handlers' annotations.
#[derive(OpenApi)]
#[openapi(
    info(title = "Lupus coordinator", version = "1", description = DESCRIPTION),
    paths(
        crate::page::index,
        routes::checkpoint,
        routes::tile,
        routes::job,
        routes::join,
        routes::next_task,
        routes::task_status,
        routes::submit,
        routes::opening,
        routes::next_verify,
        routes::verdict,
        routes::rounds,
        routes::round_current,
        routes::round,
        routes::entry,
        routes::inclusion,
        routes::consistency,
        routes::stake_table,
        routes::stake,
        routes::blob,
        routes::openapi,
        routes::metrics,
    ),
    // utoipa inlines the items of a tuple (`[position, leaf]` in openings and fraud
    // proofs) without collecting the schemas they name: listed here.
    components(
        schemas(Problem, TraceLeaf, StepLeaf, FinalLeaf),
        responses(
            BadRequest,
            Unauthorized,
            Forbidden,
            NotFound,
            Conflict,
            Timeout,
            TooLarge,
            Unprocessable,
            TooManyRequests,
            Unavailable,
            InsufficientStorage
        )
    ),
    modifiers(&SignedRequests, &StaticFiles),
    tags(
        (name = "log", description = "The transparency log: C2SP tlog-tiles, proofs, decoded entries"),
        (name = "work", description = "Joining, tasks, submissions, openings and verdicts (signed POSTs)"),
        (name = "state", description = "The job, rounds, tasks, stake and blobs"),
        (name = "operations", description = "The volunteer page, this document and the metrics"),
    ),
)]
pub struct ApiDoc;

/// The names of the five security schemes a signed request needs together.
pub const SIGNATURE_SCHEMES: [&str; 5] = [
    "lupus_key",
    "lupus_timestamp",
    "lupus_nonce",
    "lupus_content_hash",
    "lupus_signature",
];

/// Every `POST` is signed (each POST handler of [`crate::routes`] authenticates first):
/// adds the five signature headers as `apiKey` security schemes, and to every `POST`
/// one security requirement naming all five, so a client sends them together.
struct SignedRequests;

impl Modify for SignedRequests {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        let headers = [
            (
                HEADER_KEY,
                "The signer's Ed25519 public key, 64 lowercase hex digits.",
            ),
            (
                HEADER_TIMESTAMP,
                "Unix time in milliseconds, decimal; within 5 minutes of the server's clock.",
            ),
            (
                HEADER_NONCE,
                "16 random bytes as 32 lowercase hex digits, used once per key.",
            ),
            (
                HEADER_CONTENT_HASH,
                "The body's blake3 hash, 64 lowercase hex digits (of the empty body if none): the one the signature covers.",
            ),
            (
                HEADER_SIGNATURE,
                "Ed25519 signature (128 lowercase hex digits) of the canonical string \
                 `lupus request v1\\n<METHOD>\\n<path with query>\\n<blake3(body) hex>\\n\
                 <timestamp>\\n<nonce>\\n` (see the document's description).",
            ),
        ];
        for (scheme, (header, what)) in SIGNATURE_SCHEMES.into_iter().zip(headers) {
            components.add_security_scheme(
                scheme,
                SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(header, what))),
            );
        }
        let all_five = SIGNATURE_SCHEMES
            .into_iter()
            .fold(SecurityRequirement::default(), |r, scheme| {
                r.add(scheme, Vec::<String>::new())
            });
        for post in doc.paths.paths.values_mut().filter_map(|i| i.post.as_mut()) {
            post.security = Some(vec![all_five.clone()]);
        }
    }
}

/// A problem answer: `application/problem+json` with the `Problem` schema.
fn problem(description: &str) -> ResponseBuilder {
    ResponseBuilder::new().description(description).content(
        PROBLEM,
        ContentBuilder::new()
            .schema(Some(Ref::from_schema_name(Problem::name())))
            .build(),
    )
}

/// A problem answer that passes by itself: `Retry-After` says when to send again.
fn problem_retry(description: &str) -> ResponseBuilder {
    problem(description).header(
        "Retry-After",
        HeaderBuilder::new()
            .schema(Some(u32::schema()))
            .description(Some(
                "Seconds to wait before sending the same request again",
            ))
            .build(),
    )
}

macro_rules! problem_responses {
    ($($name:ident = $response:expr;)*) => {$(
        #[doc = concat!("The `", stringify!($name), "` problem answer, a reusable response.")]
        pub struct $name;

        impl<'r> ToResponse<'r> for $name {
            fn response() -> (&'r str, RefOr<Response>) {
                (stringify!($name), $response.into())
            }
        }
    )*};
}

// One per status of `crate::error::Error` that a route documents.
problem_responses! {
    BadRequest = problem("Malformed request: bad JSON, base64, entry encoding or parameter");
    Unauthorized = problem("The request is unsigned, badly signed or stale");
    Forbidden = problem(
        "This key may not do this: not joined in this role, not the task's worker or \
         verifier, or slashed",
    );
    NotFound = problem("No such task, round, entry, tile, stake or blob");
    Conflict = problem(
        "Conflicts with the current state: already done, expired, another role, or a \
         replayed nonce",
    );
    Timeout = problem(
        "The request or its body arrived too slowly (the coordinator's body-read and \
         request timeouts)",
    );
    TooLarge = problem(
        "The body is over this endpoint's size limit (refused from its Content-Length \
         before it is read, or cut off at the limit)",
    );
    TooManyRequests = problem_retry(
        "This key sent more requests of this kind than its token bucket allows",
    );
    Unprocessable = problem(
        "Well-formed but wrong content: shapes, hashes or steps that do not match",
    );
    Unavailable = problem_retry(
        "The ledger database is briefly locked or unreachable, or the coordinator is at \
         its limit of requests or unverified body bytes: nothing was written; send the \
         same request again",
    );
    InsufficientStorage = problem_retry(
        "The blob store is full: nothing was stored; send the same request again later",
    );
}

/// The volunteer page's files, `/{file}` and `/pkg/{file}`: two routes served by
/// tower-http's `ServeDir` over two directories ([`crate::page`]), which
/// `#[utoipa::path]` (one path per function) cannot describe, so they are built here.
struct StaticFiles;

impl Modify for StaticFiles {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let file = |path: &str, what: &str| {
            let ok = [
                "text/html",
                "text/javascript",
                "text/css",
                "application/wasm",
            ]
            .into_iter()
            .fold(ResponseBuilder::new().description(what), |r, kind| {
                r.content(
                    kind,
                    ContentBuilder::new()
                        .schema(Some(if kind == "application/wasm" {
                            Vec::<u8>::schema()
                        } else {
                            String::schema()
                        }))
                        .build(),
                )
            });
            let op = OperationBuilder::new()
                .tag("operations")
                .summary(Some(format!("A file of the volunteer page ({path})")))
                .parameter(
                    ParameterBuilder::new()
                        .name("file")
                        .parameter_in(ParameterIn::Path)
                        .required(Required::True)
                        .description(Some(
                            "A file name in the directory; a `.br` or `.gz` copy is sent when \
                             `Accept-Encoding` allows",
                        ))
                        .schema(Some(String::schema())),
                )
                .response("200", ok)
                .response(
                    "404",
                    problem("No such file, or the page is not built (`--web`)"),
                );
            (path.to_owned(), op)
        };
        for (path, op) in [
            file("/{file}", "A file next to the page's index.html"),
            file("/pkg/{file}", "A file of the page's wasm build"),
        ] {
            doc.paths
                .add_path_operation(path, vec![HttpMethod::Get], op);
        }
    }
}

/// The document as JSON, built once.
pub fn json() -> &'static str {
    static JSON: LazyLock<String> = LazyLock::new(|| {
        ApiDoc::openapi()
            .to_pretty_json()
            .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }).to_string())
    });
    &JSON
}
