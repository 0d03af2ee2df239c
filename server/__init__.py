"""The nearcat gRPC server, its catalogue (domain layer) and the command line."""
