//! Twin queries: `POST /devices/query`, paged with `x-ms-max-item-count` and
//! `x-ms-continuation` (present only while more pages remain).
//!
//! Each page re-runs the query over a fresh snapshot, ordered by device id, so paging is stable
//! while the fleet is; the continuation token is the offset plus a hash of the query text, so a
//! token cannot be replayed against another query.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use base64::Engine as _;
use casement_iothub::query;
use casement_iothub::rest::{
    self, HEADER_CONTINUATION, HEADER_ITEM_TYPE, HEADER_MAX_ITEM_COUNT, QueryRequest,
};
use sha2::{Digest, Sha256};

use super::{AppState, State, authorize, json_body, json_response};
use crate::auth::need;
use crate::error::ApiError;
use crate::throttle::Operation;

pub(super) async fn query(
    State(shared): AppState,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    authorize(
        &shared,
        &headers,
        &[need::SERVICE_CONNECT, need::REGISTRY_READ],
        "",
    )?;
    shared.throttle(Operation::Queries)?;
    let request: QueryRequest = json_body(body, "query")?;
    let parsed =
        query::parse(&request.query).map_err(|e| ApiError::invalid(format!("query: {e}")))?;
    let page_size = rest::page_size(header(&headers, HEADER_MAX_ITEM_COUNT))
        .map_err(|e| ApiError::new(e.error_code(), e.to_string()))?;
    let fingerprint = fingerprint(&request.query);
    let offset = match header(&headers, HEADER_CONTINUATION) {
        None => 0,
        Some(token) => decode_token(token, &fingerprint)?,
    };
    let twins = shared.registry.twins();
    let output = parsed
        .execute(&twins)
        .map_err(|e| ApiError::invalid(format!("query: {e}")))?;
    let total = output.items.len();
    let start = offset.min(total);
    let end = start.saturating_add(page_size).min(total);
    let page = &output.items[start..end];
    let mut response = json_response(StatusCode::OK, &page);
    let response_headers = response.headers_mut();
    response_headers.insert(
        HEADER_ITEM_TYPE,
        HeaderValue::from_static(output.item_type.as_str()),
    );
    if end < total
        && let Ok(token) = HeaderValue::from_str(&encode_token(end, &fingerprint))
    {
        response_headers.insert(HEADER_CONTINUATION, token);
    }
    Ok(response)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn fingerprint(query: &str) -> String {
    let digest = Sha256::digest(query.as_bytes());
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
}

fn encode_token(offset: usize, fingerprint: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{offset}:{fingerprint}"))
}

fn decode_token(token: &str, fingerprint: &str) -> Result<usize, ApiError> {
    let invalid =
        || ApiError::invalid("x-ms-continuation is not a continuation token of this query");
    let text = base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .ok()
        .and_then(|raw| String::from_utf8(raw).ok())
        .ok_or_else(invalid)?;
    let (offset, fp) = text.split_once(':').ok_or_else(invalid)?;
    if fp != fingerprint {
        return Err(invalid());
    }
    offset.parse().map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_are_bound_to_the_query() {
        let fp = fingerprint("SELECT * FROM devices");
        let token = encode_token(200, &fp);
        assert_eq!(decode_token(&token, &fp).expect("ok"), 200);
        let other = fingerprint("SELECT deviceId FROM devices");
        assert!(decode_token(&token, &other).is_err());
        assert!(decode_token("garbage!!", &fp).is_err());
    }
}
