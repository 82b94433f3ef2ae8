"""CMPv2 (RFC 4210/9480) message codec, protection, POP and an RFC 6712 client."""
