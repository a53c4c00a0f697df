//! Integration tests: each starts a real server on 127.0.0.1:0 with a
//! temporary data directory and a manual clock, and talks gRPC to it.

mod admin;
mod adversarial;
mod authz;
mod buckets;
mod callers;
mod claims;
mod cli;
mod connect;
mod control;
mod control_limits;
mod control_pages;
mod disk_full;
mod durability;
mod envoy_example;
mod gateway;
mod helpers;
mod keys;
mod operations;
mod outage;
mod postgres;
mod refresh;
mod replicas;
mod sessions;
mod tls;
