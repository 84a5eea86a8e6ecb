//! Protobuf messages as canonical protobuf JSON (enum names, camelCase fields) or YAML,
//! through the descriptors compiled into weft-proto.

use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};

use crate::CtlError;

/// Output formats for machine-readable commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

/// `message` (of protobuf type `full_name`) as a JSON value. With `defaults`, fields at
/// their default value are included, so scripts see a stable shape; without, the output is
/// shorter, for reading.
pub fn to_value<M: prost::Message>(
    message: &M,
    full_name: &str,
    defaults: bool,
) -> Result<serde_json::Value, CtlError> {
    let pool = DescriptorPool::decode(weft_proto::FILE_DESCRIPTOR_SET)
        .map_err(|e| CtlError::Render(e.to_string()))?;
    let descriptor = pool
        .get_message_by_name(full_name)
        .ok_or_else(|| CtlError::Render(format!("no descriptor for {full_name}")))?;
    let dynamic = DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice())
        .map_err(|e| CtlError::Render(e.to_string()))?;
    let options = SerializeOptions::new().skip_default_fields(!defaults);
    dynamic
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|e| CtlError::Render(e.to_string()))
}

/// Renders a JSON value as pretty JSON or YAML.
pub fn format_value(value: &serde_json::Value, format: Format) -> Result<String, CtlError> {
    match format {
        Format::Yaml => serde_saphyr::to_string(value).map_err(|e| CtlError::Render(e.to_string())),
        Format::Json | Format::Table => serde_json::to_string_pretty(value)
            .map(|mut s| {
                s.push('\n');
                s
            })
            .map_err(|e| CtlError::Render(e.to_string())),
    }
}
