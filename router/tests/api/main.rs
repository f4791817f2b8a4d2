//! End-to-end tests of the public API over real HTTP against the test kit's
//! fake generator (failure keywords: see `spindle_testkit::fake_generator`).
//! Every response object and stream event is also parsed with the strict
//! `async-openai` types and validated against the Open Responses schema.

mod auth;
mod chat;
mod compact;
mod conversations;
mod embeddings;
mod errors;
mod http_worker;
mod listing;
mod logprobs;
mod openapi;
mod responses;
mod streams;
mod support;
mod surface;
mod tools;
mod websocket;
