//! IoT Hub automatic device management configurations on [`ServiceClient`]:
//! `GET/PUT/DELETE /configurations/{id}`, `GET /configurations`, `POST
//! /configurations/testQueries`. The JSON is [`casement_iothub::configuration`]'s, shared with
//! `casement hub`; the contract is `docs/iothub-contract.md`.
//!
//! Every call counts against the tier's `configurations` quota (S1: 20/min per unit).

use casement_iothub::configuration::{
    CONFIGURATIONS_PATH, Configuration, TEST_QUERIES_PATH, TestQueriesRequest, TestQueriesResponse,
    configuration_path,
};
use casement_iothub::quota::Operation;
use casement_iothub::rest::{CONTENT_TYPE_JSON, HEADER_IF_MATCH};

use casement_iothub::rest::quote_etag;

use crate::client::{ServiceClient, decode, json_request};
use crate::error::ClientError;

/// The error a [`crate::HubApi`] without configuration support answers.
pub(crate) fn unsupported(op: &str) -> ClientError {
    ClientError::Decode {
        op: op.to_owned(),
        message: "this hub client does not support configurations".to_owned(),
    }
}

fn encode<T: serde::Serialize>(op: &str, value: &T) -> Result<Vec<u8>, ClientError> {
    serde_json::to_vec(value).map_err(|e| ClientError::Decode {
        op: op.to_owned(),
        message: e.to_string(),
    })
}

impl ServiceClient {
    /// `GET /configurations/{id}`.
    pub async fn configuration(&self, id: &str) -> Result<Configuration, ClientError> {
        let path = configuration_path(id);
        let op = format!("GET {path}");
        let url = self.url(&path);
        self.send(
            &op,
            Operation::Configurations,
            self.request_timeout(),
            true,
            |http| http.get(&url),
            |_, _, body| decode(&op, body),
        )
        .await
    }

    /// `GET /configurations`: every configuration of the hub (at most 100), in id order.
    pub async fn configurations(&self) -> Result<Vec<Configuration>, ClientError> {
        let op = format!("GET {CONFIGURATIONS_PATH}");
        let url = self.url(CONFIGURATIONS_PATH);
        self.send(
            &op,
            Operation::Configurations,
            self.request_timeout(),
            true,
            |http| http.get(&url),
            |_, _, body| decode(&op, body),
        )
        .await
    }

    /// `PUT /configurations/{id}`: creates the configuration when `etag` is `None` (409 when
    /// it exists), else updates it with `If-Match` (412 on a stale ETag; `*` matches any).
    /// Only labels, metrics, priority and target condition may change on an update.
    pub async fn put_config(
        &self,
        config: &Configuration,
        etag: Option<&str>,
    ) -> Result<Configuration, ClientError> {
        let path = configuration_path(&config.id);
        let op = format!("PUT {path}");
        let url = self.url(&path);
        let body = encode(&op, config)?;
        let if_match = etag.map(quote_etag);
        self.send(
            &op,
            Operation::Configurations,
            self.request_timeout(),
            // A replayed create is refused with 409 and a replayed update with 412: no harm.
            true,
            |http| json_request(http.put(&url), body.clone(), if_match.as_deref()),
            |_, _, body| decode(&op, body),
        )
        .await
    }

    /// `DELETE /configurations/{id}` with `If-Match: *`. The desired properties it wrote stay
    /// in the twins.
    pub async fn delete_config(&self, id: &str) -> Result<(), ClientError> {
        let path = configuration_path(id);
        let op = format!("DELETE {path}");
        let url = self.url(&path);
        self.send(
            &op,
            Operation::Configurations,
            self.request_timeout(),
            true,
            |http| http.delete(&url).header(HEADER_IF_MATCH, "*"),
            |_, _, _| Ok(()),
        )
        .await
    }

    /// `POST /configurations/testQueries`: which of a target condition and metric queries
    /// the hub cannot parse.
    pub async fn test_configuration_queries(
        &self,
        request: &TestQueriesRequest,
    ) -> Result<TestQueriesResponse, ClientError> {
        let op = format!("POST {TEST_QUERIES_PATH}");
        let url = self.url(TEST_QUERIES_PATH);
        let body = encode(&op, request)?;
        self.send(
            &op,
            Operation::Configurations,
            self.request_timeout(),
            true,
            |http| {
                http.post(&url)
                    .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE_JSON)
                    .body(body.clone())
            },
            |_, _, body| decode(&op, body),
        )
        .await
    }
}
