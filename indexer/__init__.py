"""Reference storage (Redis/Valkey), the FAISS index derived from it, and kNN voting."""
