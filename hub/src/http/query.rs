//! Twin queries: `POST /devices/query`, paged with `x-ms-max-item-count` and
//! `x-ms-continuation` (present only while more pages remain).
//!
//! A query whose items each come from one twin (no `GROUP BY`, no aggregate) is paged by key:
//! the twins are read in device-id order and the continuation token names the last device of
//! the page, so a page reads only the twins it returns (plus the look-ahead that tells whether
//! another page exists) and paging a fleet costs O(fleet) in all, not O(fleet) per page. Devices
//! created or deleted meanwhile shift nothing: a page never repeats or skips an unchanged twin.
//! An aggregating query's result is small; it is recomputed per page and sliced at an offset.
//! The token also carries the count of items returned so far (for `TOP`) and a hash of the
//! query text, so a token cannot be replayed against another query.

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

use super::{Access, AppState, State, admit, json_body, json_response};
use crate::error::ApiError;

pub(super) async fn query(
    State(shared): AppState,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    admit(&shared, &headers, Access::QUERY, "").await?;
    let request: QueryRequest = json_body(body, "query")?;
    let parsed = query::parse_with(&request.query, shared.query_dialect)
        .map_err(|e| ApiError::invalid(format!("query: {e}")))?;
    let page_size = rest::page_size(header(&headers, HEADER_MAX_ITEM_COUNT))
        .map_err(|e| ApiError::new(e.error_code(), e.to_string()))?;
    let fingerprint = fingerprint(&request.query);
    let cursor = match header(&headers, HEADER_CONTINUATION) {
        None => Cursor::default(),
        Some(token) => decode_token(token, &fingerprint)?,
    };
    let top = parsed
        .top
        .map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX));
    let (page, next) = match parsed.rows() {
        Some(rows) => {
            let want = page_size.min(top.saturating_sub(cursor.returned));
            let scan = shared
                .registry
                .scan_twins(cursor.after.as_deref(), want, |twin| rows.item(twin));
            let returned = cursor.returned + scan.items.len();
            let next = match scan.last {
                Some(after) if scan.more && returned < top => Some(Cursor {
                    returned,
                    after: Some(after),
                }),
                _ => None,
            };
            (scan.items, next)
        }
        None => {
            let twins = shared.registry.twins();
            let mut output = parsed
                .execute(&twins)
                .map_err(|e| ApiError::invalid(format!("query: {e}")))?;
            let total = output.items.len();
            let start = cursor.returned.min(total);
            let end = start.saturating_add(page_size).min(total);
            output.items.truncate(end);
            let page = output.items.split_off(start);
            let next = (end < total).then_some(Cursor {
                returned: end,
                after: None,
            });
            (page, next)
        }
    };
    shared
        .stats
        .query_pages
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    shared
        .stats
        .query_items
        .fetch_add(page.len() as u64, std::sync::atomic::Ordering::Relaxed);
    let mut response = json_response(StatusCode::OK, &page);
    let response_headers = response.headers_mut();
    response_headers.insert(
        HEADER_ITEM_TYPE,
        HeaderValue::from_static(parsed.item_type().as_str()),
    );
    if let Some(next) = next
        && let Ok(token) = HeaderValue::from_str(&encode_token(&next, &fingerprint))
    {
        response_headers.insert(HEADER_CONTINUATION, token);
    }
    Ok(response)
}

/// Where the next page starts.
#[derive(Debug, Default, PartialEq, Eq)]
struct Cursor {
    /// Items returned by the pages before.
    returned: usize,
    /// The device id of the last item returned (per-twin queries only).
    after: Option<String>,
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn fingerprint(query: &str) -> String {
    let digest = Sha256::digest(query.as_bytes());
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// `base64("{fingerprint}:{returned}:{after}")`; the device id goes last, as it may hold `:`.
fn encode_token(cursor: &Cursor, fingerprint: &str) -> String {
    let after = cursor.after.as_deref().unwrap_or("");
    base64::engine::general_purpose::STANDARD
        .encode(format!("{fingerprint}:{}:{after}", cursor.returned))
}

fn decode_token(token: &str, fingerprint: &str) -> Result<Cursor, ApiError> {
    let invalid =
        || ApiError::invalid("x-ms-continuation is not a continuation token of this query");
    let text = base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .ok()
        .and_then(|raw| String::from_utf8(raw).ok())
        .ok_or_else(invalid)?;
    let mut parts = text.splitn(3, ':');
    let (Some(fp), Some(returned), Some(after)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(invalid());
    };
    if fp != fingerprint {
        return Err(invalid());
    }
    Ok(Cursor {
        returned: returned.parse().map_err(|_| invalid())?,
        after: (!after.is_empty()).then(|| after.to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_are_bound_to_the_query() {
        let fp = fingerprint("SELECT * FROM devices");
        for cursor in [
            Cursor {
                returned: 200,
                after: None,
            },
            Cursor {
                returned: 100,
                after: Some("site:7:pump".into()),
            },
        ] {
            let token = encode_token(&cursor, &fp);
            assert_eq!(decode_token(&token, &fp).expect("ok"), cursor);
            let other = fingerprint("SELECT deviceId FROM devices");
            assert!(decode_token(&token, &other).is_err());
        }
        assert!(decode_token("garbage!!", &fp).is_err());
        let two_parts = base64::engine::general_purpose::STANDARD.encode(format!("{fp}:12"));
        assert!(decode_token(&two_parts, &fp).is_err());
    }
}
