//! The Weft agent protocol: the `.proto` definitions of discovery and identity and the
//! tonic/prost code generated from them, and nothing else.
