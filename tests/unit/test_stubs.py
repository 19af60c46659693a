"""The committed stubs are what the .proto files generate: nobody edits generated code by hand."""

from voxgrid import protogen


def test_committed_stubs_match_the_protos() -> None:
    assert protogen.drift() == [], "run `python -m voxgrid.protogen` and commit the result"


def test_every_streaming_rpc_is_bidi_and_config_first() -> None:
    from voxgrid.v1 import agent_pb2, duplex_pb2, echo_pb2, llm_pb2, stt_pb2, tts_pb2

    for module in (agent_pb2, duplex_pb2, echo_pb2, llm_pb2, stt_pb2, tts_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                if method.client_streaming or method.server_streaming:
                    assert method.client_streaming and method.server_streaming, method.full_name
                    oneof = method.input_type.oneofs[0]
                    assert oneof.fields[0].name == "config", method.full_name
