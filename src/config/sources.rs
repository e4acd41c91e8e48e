//! The sources of settings, each read into a [`Layer`]: a TOML file, the environment, the
//! command line. Layers stack (a higher one wins, setting by setting) and hand out values as
//! text, so every error can name the setting, whatever source it came from.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use super::{ConfigError, SETTINGS};
use crate::pipeline::ENV_WIDGET_IDS;
use crate::sink::config::property_of_env;
use crate::snapengage::settings::{ENV_API_TOKEN, ENV_API_TOKEN_FILE};

/// One setting's value as given, kept as text until the component that owns it parses it.
#[derive(Clone)]
enum Value {
    Text(String),
    /// A TOML array.
    List(Vec<String>),
}

/// The settings of one source, by environment name, and librdkafka properties by their own
/// names. Not `Debug`: it holds the token as plain text until validation wraps it.
#[derive(Clone, Default)]
pub struct Layer {
    values: BTreeMap<&'static str, Value>,
    kafka: BTreeMap<String, String>,
}

/// The key of a setting in the TOML file: its environment name without prefix, in lower case
/// (`CASESTREAM_POLL_INTERVAL` is `poll_interval`).
pub fn file_key(env: &str) -> String {
    env.split_once('_')
        .map_or(env, |(_, rest)| rest)
        .to_ascii_lowercase()
}

/// A TOML scalar as text; `None` for arrays and tables.
fn scalar_text(value: toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s),
        toml::Value::Integer(n) => Some(n.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        toml::Value::Datetime(d) => Some(d.to_string()),
        toml::Value::Array(_) | toml::Value::Table(_) => None,
    }
}

impl Layer {
    /// Reads a TOML file whose keys are the settings' [`file_key`]s, plus a `[kafka]` table of
    /// librdkafka properties.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let error = |reason: String| ConfigError::File {
            path: path.to_owned(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
        // toml's own message quotes the offending line, which may hold the API token: name
        // the line and column and say what is wrong, never show the text.
        let table: toml::Table = toml::from_str(&text).map_err(|e| {
            let at = e
                .span()
                .map(|span| {
                    let before = &text[..span.start.min(text.len())];
                    let line = before.matches('\n').count() + 1;
                    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                    format!("line {line}, column {column}: ")
                })
                .unwrap_or_default();
            error(format!(
                "{at}{} (the line is not shown: it may hold a secret)",
                e.message().trim_end()
            ))
        })?;
        let mut layer = Layer::default();
        for (key, value) in table {
            if key == "kafka" {
                let toml::Value::Table(properties) = value else {
                    return Err(error(
                        "`kafka` must be a table of librdkafka properties".into(),
                    ));
                };
                for (property, value) in properties {
                    let text = scalar_text(value).ok_or_else(|| {
                        error(format!(
                            "[kafka] `{property}` must be a string, number or boolean"
                        ))
                    })?;
                    layer.kafka.insert(property, text);
                }
                continue;
            }
            let Some(env) = SETTINGS.iter().find(|env| file_key(env) == key) else {
                // The line, never its text (it may hold a secret).
                let line = text
                    .lines()
                    .position(|l| l.trim_start().trim_start_matches('"').starts_with(&key))
                    .map(|n| format!("line {}: ", n + 1))
                    .unwrap_or_default();
                return Err(error(format!(
                    "{line}unknown setting `{key}` (the settings are the environment variables' \
                     names without prefix, in lower case, e.g. `poll_interval`)"
                )));
            };
            let value = match value {
                // Only the widget list is a list.
                toml::Value::Array(items) if *env == ENV_WIDGET_IDS => Value::List(
                    items
                        .into_iter()
                        .map(|item| {
                            scalar_text(item)
                                .ok_or_else(|| error(format!("`{key}` must be a list of strings")))
                        })
                        .collect::<Result<_, _>>()?,
                ),
                other => Value::Text(scalar_text(other).ok_or_else(|| {
                    error(format!("`{key}` must be a string, number or boolean"))
                })?),
            };
            layer.values.insert(env, value);
        }
        Ok(layer)
    }

    /// Reads the environment variables named in [`SETTINGS`]; `KAFKA_<NAME>` becomes the
    /// librdkafka property `<name>` with `_` → `.`, as the Confluent images do.
    pub fn from_env(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut layer = Layer::default();
        for (name, value) in vars {
            if let Some(env) = SETTINGS.iter().find(|env| **env == name) {
                layer.values.insert(env, Value::Text(value));
            } else if let Some(property) = property_of_env(&name) {
                layer.kafka.insert(property, value);
            }
        }
        layer
    }

    /// Settings given on the command line, by environment name, and librdkafka properties.
    pub fn from_pairs(
        settings: impl IntoIterator<Item = (&'static str, Option<String>)>,
        properties: impl IntoIterator<Item = (String, String)>,
    ) -> Self {
        Layer {
            values: settings
                .into_iter()
                .filter_map(|(env, value)| Some((env, Value::Text(value?))))
                .collect(),
            kafka: properties.into_iter().collect(),
        }
    }

    /// `self` over `lower`: a setting here wins; Kafka properties merge by name.
    pub fn over(self, lower: Layer) -> Layer {
        let mut values = lower.values;
        // A token given at a higher level replaces a token file from a lower one, and back.
        if self.values.contains_key(ENV_API_TOKEN) || self.values.contains_key(ENV_API_TOKEN_FILE) {
            values.remove(ENV_API_TOKEN);
            values.remove(ENV_API_TOKEN_FILE);
        }
        values.extend(self.values);
        let mut kafka = lower.kafka;
        kafka.extend(self.kafka);
        Layer { values, kafka }
    }

    /// The librdkafka properties given.
    pub fn kafka_properties(&self) -> &BTreeMap<String, String> {
        &self.kafka
    }

    /// A setting exactly as given (a list joined by commas).
    pub fn raw(&self, env: &str) -> Option<String> {
        self.values.get(env).map(|value| match value {
            Value::Text(text) => text.clone(),
            Value::List(items) => items.join(","),
        })
    }

    /// A setting as given, surrounding blanks removed.
    pub fn text(&self, env: &str) -> Option<String> {
        self.raw(env).map(|text| text.trim().to_owned())
    }

    /// A list, given as a TOML array or comma-separated text; blank items dropped.
    pub fn list(&self, env: &str) -> Vec<String> {
        let items: Vec<String> = match self.values.get(env) {
            None => Vec::new(),
            Some(Value::List(items)) => items.clone(),
            Some(Value::Text(text)) => text.split(',').map(str::to_owned).collect(),
        };
        items
            .into_iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    }

    /// A setting that must be given and not blank.
    pub fn required(&self, env: &'static str) -> Result<String, ConfigError> {
        self.text(env)
            .filter(|text| !text.is_empty())
            .ok_or_else(|| ConfigError::missing(env))
    }

    /// A setting parsed by its owner's rule; `None` when not given. An error names the
    /// setting, the value and the rule.
    pub fn parse<T, E: ToString>(
        &self,
        env: &'static str,
        parse: impl FnOnce(&str) -> Result<T, E>,
    ) -> Result<Option<T>, ConfigError> {
        self.text(env)
            .map(|text| parse(&text).map_err(|reason| ConfigError::invalid(env, &text, reason)))
            .transpose()
    }

    /// A duration like `30s`, `5m` or `7d`.
    pub fn duration(&self, env: &'static str) -> Result<Option<Duration>, ConfigError> {
        self.parse(env, |text| {
            humantime::parse_duration(text)
                .map_err(|e| format!("not a duration like 30s, 5m or 7d ({e})"))
        })
    }

    /// A whole number above zero.
    pub fn positive<T: TryFrom<u32>>(&self, env: &'static str) -> Result<Option<T>, ConfigError> {
        const RULE: &str = "must be a positive whole number";
        self.parse(env, |text| match text.parse::<i32>() {
            Ok(n) if n > 0 => T::try_from(n.unsigned_abs()).map_err(|_| RULE),
            _ => Err(RULE),
        })
    }

    /// `true`/`false` (also `1`/`0`, `yes`/`no`).
    pub fn flag(&self, env: &'static str) -> Result<Option<bool>, ConfigError> {
        self.parse(env, |text| match text.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Ok(true),
            "false" | "0" | "no" => Ok(false),
            _ => Err("must be true or false"),
        })
    }
}
