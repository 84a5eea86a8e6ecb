//! From YAML text to [`ParsedDocument`]s.
//!
//! A file is split into its `---`-separated documents first, so that one broken document
//! does not hide the problems of the others and every diagnostic can name its document's
//! index. Each document is then read twice with serde-saphyr: once loosely (is it a mapping,
//! what are `apiVersion` and `kind`?) and once into its kind's typed struct, through
//! `serde_path_to_error` so that a type error names its field path (`spec.ports[1].port`)
//! and not only the line serde-saphyr reports.

use std::path::Path;

use serde::de::DeserializeOwned;

use super::{
    Diagnostic, Origin,
    document::{
        self, Body, Document, EndpointSliceDocument, Kind, NodeDocument, NodeSpec, ParsedDocument,
        SecretDocument,
    },
};

/// Reads and parses one file; read errors become a diagnostic for the whole file.
pub fn parse_file(path: &Path, diagnostics: &mut Vec<Diagnostic>) -> Vec<ParsedDocument> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_str(path, &text, diagnostics),
        Err(e) => {
            diagnostics.push(Diagnostic::error(
                Origin::File {
                    path: path.to_path_buf(),
                    doc: None,
                },
                "",
                format!("cannot read the file: {e}"),
            ));
            Vec::new()
        }
    }
}

/// Parses the documents of one file's text. Problems go to `diagnostics`; documents that
/// parsed are returned even when others did not, so every problem is reported at once.
pub fn parse_str(
    path: &Path,
    text: &str,
    diagnostics: &mut Vec<Diagnostic>,
) -> Vec<ParsedDocument> {
    let mut out = Vec::new();
    for segment in split_documents(text) {
        let origin = Origin::file_doc(path, segment.index);
        if let Some(doc) = parse_document(&origin, &segment, diagnostics) {
            out.push(doc);
        }
    }
    out
}

/// One `---`-separated document of a file.
#[derive(Debug)]
struct Segment {
    /// 0-based index among the file's documents.
    index: usize,
    /// 1-based line of the file where `text` starts.
    first_line: u64,
    text: String,
}

/// Splits on `---` marker lines. The text before the first marker is a document only if it
/// holds more than comments and blank lines (a file may start with `---`). `...` end
/// markers are dropped. A marker inside a block scalar cannot start at column 0, so
/// splitting on lines is safe for the documents this loader accepts.
fn split_documents(text: &str) -> Vec<Segment> {
    let mut segments = Vec::new();
    let mut current = String::new();
    let mut first_line = 1u64;
    let mut index = 0usize;
    let mut seen_marker = false;
    for (n, line) in text.lines().enumerate() {
        let line_no = n as u64 + 1;
        let is_marker = line == "---" || line.starts_with("--- ") || line.starts_with("---\t");
        if is_marker {
            if seen_marker || !is_blank(&current) {
                segments.push(Segment {
                    index,
                    first_line,
                    text: std::mem::take(&mut current),
                });
                index += 1;
            }
            current.clear();
            seen_marker = true;
            first_line = line_no + 1;
            continue;
        }
        if line == "..." {
            current.push('\n');
            continue;
        }
        current.push_str(line);
        current.push('\n');
    }
    if !is_blank(&current) || (seen_marker && segments.is_empty()) {
        segments.push(Segment {
            index,
            first_line,
            text: current,
        });
    }
    segments
}

/// Only blank lines, comments and directives.
fn is_blank(text: &str) -> bool {
    text.lines().all(|l| {
        let t = l.trim();
        t.is_empty() || t.starts_with('#') || t.starts_with('%')
    })
}

fn parse_document(
    origin: &Origin,
    segment: &Segment,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<ParsedDocument> {
    if is_blank(&segment.text) {
        return None;
    }
    let loose: serde_json::Value = match serde_saphyr::from_str(&segment.text) {
        Ok(v) => v,
        Err(e) => {
            diagnostics.push(yaml_error(origin, segment, "", &e));
            return None;
        }
    };
    let map = match &loose {
        serde_json::Value::Null => return None,
        serde_json::Value::Object(map) => map,
        other => {
            diagnostics.push(Diagnostic::error(
                origin.clone(),
                "",
                format!(
                    "a document must be a mapping with apiVersion, kind, metadata and spec, \
                     got {}",
                    json_type(other)
                ),
            ));
            return None;
        }
    };
    let field = |name: &str, diagnostics: &mut Vec<Diagnostic>| match map.get(name) {
        Some(serde_json::Value::String(s)) if !s.is_empty() => Some(s.clone()),
        None | Some(serde_json::Value::Null) => {
            diagnostics.push(Diagnostic::error(origin.clone(), name, "required"));
            None
        }
        Some(other) => {
            diagnostics.push(Diagnostic::error(
                origin.clone(),
                name,
                format!("must be a non-empty string, got {}", json_type(other)),
            ));
            None
        }
    };
    let api_version = field("apiVersion", diagnostics);
    let kind_name = field("kind", diagnostics);
    let (api_version, kind_name) = (api_version?, kind_name?);
    if let Some(instead) = document::replaced_kind(&api_version, &kind_name) {
        let mut d = Diagnostic::error(origin.clone(), "kind", instead);
        d.kind = Some(kind_name);
        diagnostics.push(d);
        return None;
    }
    let Some(kind) = Kind::from_api(&api_version, &kind_name) else {
        let mut d = Diagnostic::warning(
            origin.clone(),
            "",
            format!("unknown kind {kind_name:?} of apiVersion {api_version:?}, skipped"),
        );
        d.kind = Some(kind_name);
        diagnostics.push(d);
        return None;
    };

    let typed = match kind {
        Kind::Workload => typed(origin, segment, kind, Body::Workload),
        Kind::Service => typed(origin, segment, kind, Body::Service),
        Kind::NetworkPolicy => typed(origin, segment, kind, Body::NetworkPolicy),
        Kind::AuthorizationPolicy => typed(origin, segment, kind, Body::AuthorizationPolicy),
        Kind::PeerAuthentication => typed(origin, segment, kind, Body::PeerAuthentication),
        Kind::HttpRoute => typed(origin, segment, kind, Body::HttpRoute),
        Kind::GrpcRoute => typed(origin, segment, kind, Body::GrpcRoute),
        Kind::Gateway => typed(origin, segment, kind, Body::Gateway),
        Kind::Secret => top_level::<SecretDocument>(origin, segment, kind),
        Kind::Node => top_level::<NodeDocument>(origin, segment, kind),
        Kind::EndpointSlice => top_level::<EndpointSliceDocument>(origin, segment, kind),
        Kind::Backend => typed(origin, segment, kind, Body::Backend),
        Kind::ApiPolicy => typed(origin, segment, kind, Body::ApiPolicy),
        Kind::Consumer => typed(origin, segment, kind, Body::Consumer),
        Kind::Plan => typed(origin, segment, kind, Body::Plan),
    };
    match typed {
        Ok(doc) => Some(doc),
        Err(d) => {
            diagnostics.push(*d);
            None
        }
    }
}

fn typed<S: DeserializeOwned>(
    origin: &Origin,
    segment: &Segment,
    kind: Kind,
    wrap: fn(S) -> Body,
) -> Result<ParsedDocument, Box<Diagnostic>> {
    let mut path = String::new();
    let parsed = serde_saphyr::with_deserializer_from_str(&segment.text, |de| {
        serde_path_to_error::deserialize::<_, Document<S>>(de).map_err(|e| {
            path = e.path().to_string();
            e.into_inner()
        })
    });
    let with_kind = |mut d: Diagnostic| {
        d.kind = Some(kind.name().to_string());
        Box::new(d)
    };
    let doc = parsed.map_err(|e| {
        // serde_path_to_error writes "." for the document root.
        let path = if path == "." { "" } else { path.as_str() };
        with_kind(yaml_error(origin, segment, path, &e))
    })?;
    let Some(spec) = doc.spec else {
        return Err(with_kind(Diagnostic::error(
            origin.clone(),
            "spec",
            "required (write `spec: {}` for an empty one)",
        )));
    };
    Ok(ParsedDocument {
        origin: origin.clone(),
        kind,
        meta: doc.metadata,
        body: wrap(spec),
    })
}

/// A kind without `spec`, whose fields sit at the top (Secret, Node, EndpointSlice).
trait TopLevel: DeserializeOwned {
    fn into_parts(self) -> (document::ObjectMeta, Body);
}

impl TopLevel for SecretDocument {
    fn into_parts(self) -> (document::ObjectMeta, Body) {
        (self.metadata.clone(), Body::Secret(self.into_spec()))
    }
}

impl TopLevel for NodeDocument {
    fn into_parts(self) -> (document::ObjectMeta, Body) {
        (self.metadata, Body::Node(NodeSpec::default()))
    }
}

impl TopLevel for EndpointSliceDocument {
    fn into_parts(self) -> (document::ObjectMeta, Body) {
        (self.metadata.clone(), Body::EndpointSlice(self.into_spec()))
    }
}

fn top_level<D: TopLevel>(
    origin: &Origin,
    segment: &Segment,
    kind: Kind,
) -> Result<ParsedDocument, Box<Diagnostic>> {
    let mut path = String::new();
    let parsed = serde_saphyr::with_deserializer_from_str(&segment.text, |de| {
        serde_path_to_error::deserialize::<_, D>(de).map_err(|e| {
            path = e.path().to_string();
            e.into_inner()
        })
    });
    let doc = parsed.map_err(|e| {
        let path = if path == "." { "" } else { path.as_str() };
        let mut d = yaml_error(origin, segment, path, &e);
        d.kind = Some(kind.name().to_string());
        Box::new(d)
    })?;
    let (meta, body) = doc.into_parts();
    Ok(ParsedDocument {
        origin: origin.clone(),
        kind,
        meta,
        body,
    })
}

/// A serde-saphyr error as a diagnostic: its message without the source snippet, and its
/// line translated from the document to the file.
fn yaml_error(
    origin: &Origin,
    segment: &Segment,
    path: &str,
    e: &serde_saphyr::Error,
) -> Diagnostic {
    let mut message = e.without_snippet().to_string();
    // The location is reported separately, as a file line.
    if let Some(cut) = message.find(" at line ") {
        message.truncate(cut);
    }
    let mut d = Diagnostic::error(origin.clone(), path, plain(message));
    d.line = e
        .location()
        .map(|l| l.line())
        .filter(|l| *l > 0)
        .map(|l| segment.first_line + l - 1);
    d
}

/// Parser vocabulary in the words of the documents' readers.
fn plain(message: String) -> String {
    let replaced = match message.as_str() {
        "expected sequence start" => "expected a list",
        "expected mapping start" => "expected a mapping (key: value pairs)",
        m if m.starts_with("invalid i64") || m.starts_with("invalid u") => "expected an integer",
        _ => return message,
    };
    replaced.to_string()
}

fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a sequence",
        serde_json::Value::Object(_) => "a mapping",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_documents_and_counts_from_zero() {
        let text = "# header\n---\na: 1\n---\n---\nb: 2\n...\n";
        let segs = split_documents(text);
        let got: Vec<_> = segs.iter().map(|s| (s.index, s.first_line)).collect();
        assert_eq!(got, vec![(0, 3), (1, 5), (2, 6)]);
        assert!(is_blank(&segs[1].text));

        let segs = split_documents("a: 1\n---\nb: 2\n");
        let got: Vec<_> = segs.iter().map(|s| (s.index, s.first_line)).collect();
        assert_eq!(got, vec![(0, 1), (1, 3)]);
    }
}
