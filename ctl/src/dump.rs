//! `weftctl config dump`: what the control plane would send an agent on a node.

use weft_proto::discovery::v1::{ConfigDumpRequest, ResourceType};

use crate::{
    CtlError,
    connect::ControlArgs,
    render::{Format, format_value, to_value},
};

pub async fn dump(
    control: &ControlArgs,
    node: &str,
    types: &[ResourceType],
    format: Format,
) -> Result<String, CtlError> {
    let mut client = control.connect().await?;
    let response = client
        .config_dump(ConfigDumpRequest {
            node: node.to_string(),
            resource_types: types.iter().map(|t| (*t).into()).collect(),
        })
        .await?
        .into_inner();
    format_value(
        &to_value(&response, "weft.discovery.v1.ConfigDumpResponse", false)?,
        format,
    )
}
