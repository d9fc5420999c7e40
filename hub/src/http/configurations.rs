//! Automatic device management configurations: `GET /configurations[?top=n]`,
//! `GET|PUT|DELETE /configurations/{id}`, `POST /configurations/testQueries`.
//! The model and the evaluation are in `crate::configurations`.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{Access, AppState, State, admit, if_match, json_body, json_response};
use crate::configurations::{
    ConfigurationInput, MAX_CONFIGURATIONS, TestQueriesInput, test_queries,
};
use crate::error::ApiError;

/// What configuration calls are authorized on.
const RESOURCE: &str = "configurations";

#[derive(Debug, Deserialize)]
pub(super) struct ListParams {
    top: Option<usize>,
}

pub(super) async fn list(
    State(shared): AppState,
    headers: HeaderMap,
    Query(params): Query<ListParams>,
) -> Result<Response, ApiError> {
    admit(&shared, &headers, Access::CONFIGURATION_READ, RESOURCE).await?;
    let top = params
        .top
        .unwrap_or(MAX_CONFIGURATIONS)
        .min(MAX_CONFIGURATIONS);
    Ok(json_response(
        StatusCode::OK,
        &shared.configurations.list(top),
    ))
}

pub(super) async fn get(
    State(shared): AppState,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    admit(&shared, &headers, Access::CONFIGURATION_READ, RESOURCE).await?;
    Ok(json_response(
        StatusCode::OK,
        &shared.configurations.get(&id)?,
    ))
}

/// Without `If-Match` a PUT creates (201; 409 when the id exists); with it, it updates (200).
pub(super) async fn put(
    State(shared): AppState,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    admit(&shared, &headers, Access::CONFIGURATION_WRITE, RESOURCE).await?;
    let input: ConfigurationInput = json_body(body, "configuration")?;
    let (config, created) =
        shared
            .configurations
            .put(&id, input, if_match(&headers), shared.clock.now())?;
    shared.store.flush().await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json_response(status, &config))
}

pub(super) async fn delete(
    State(shared): AppState,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    admit(&shared, &headers, Access::CONFIGURATION_WRITE, RESOURCE).await?;
    shared.configurations.delete(&id, if_match(&headers))?;
    shared.store.flush().await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(super) async fn test(
    State(shared): AppState,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    admit(&shared, &headers, Access::CONFIGURATION_READ, RESOURCE).await?;
    let input: TestQueriesInput = json_body(body, "testQueries")?;
    Ok(json_response(StatusCode::OK, &test_queries(input)))
}
