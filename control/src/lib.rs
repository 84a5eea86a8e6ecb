//! The control plane: the mesh's certificate authority, its configuration sources (a
//! directory of YAML documents, or Kubernetes) and the discovery server agents subscribe to.
