//! Pure encoding: an outgoing record to its topic, key, value and headers.

use rdkafka::message::{Header, OwnedHeaders};

use super::Outgoing;
use crate::config::{EventFormat, Topics};
use crate::events::{STRUCTURED_CONTENT_TYPE, TYPE_CREATED};

/// A record ready for the producer.
#[derive(Debug, PartialEq)]
pub struct Encoded<'a> {
    pub topic: &'a str,
    pub key: Option<&'a str>,
    pub payload: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
}

impl Encoded<'_> {
    pub fn kafka_headers(&self) -> OwnedHeaders {
        self.headers
            .iter()
            .fold(OwnedHeaders::new(), |h, (key, value)| {
                h.insert(Header {
                    key,
                    value: Some(value.as_str()),
                })
            })
    }
}

/// The topic a record goes to.
pub fn topic<'a>(record: &Outgoing, topics: &'a Topics) -> &'a str {
    match record {
        Outgoing::Event(event) if event.event_type == TYPE_CREATED => &topics.cases,
        Outgoing::Event(_) => &topics.surveys,
        Outgoing::DeadLetter(_) => &topics.deadletter,
    }
}

pub fn record<'a>(record: &'a Outgoing, topics: &'a Topics, format: EventFormat) -> Encoded<'a> {
    let topic = topic(record, topics);
    match record {
        Outgoing::Event(event) => {
            let (payload, headers) = match format {
                EventFormat::Structured => (
                    event.to_structured_bytes(),
                    vec![("content-type", STRUCTURED_CONTENT_TYPE.to_owned())],
                ),
                EventFormat::Binary => (event.data_bytes(), event.binary_headers()),
            };
            Encoded {
                topic,
                key: Some(event.subject.as_str()),
                payload,
                headers,
            }
        }
        Outgoing::DeadLetter(dead) => Encoded {
            topic,
            key: dead.case_id.as_deref(),
            payload: dead.body.clone(),
            headers: dead.headers(),
        },
    }
}
