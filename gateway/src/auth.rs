//! Who is calling: API keys and JWTs.
