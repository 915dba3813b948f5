# Generated protobuf modules of package switchyard.v1 live in switchyard/v1 (scripts/gen-proto.sh writes them).
