"""Generated gRPC stubs of protos/sinfusion/v1/sinfusion.proto (tools/gen_protos.py)."""
