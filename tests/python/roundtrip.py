"""A client in another language, built from the contract alone.

Generates Python stubs from proto/ with grpcio-tools, then round-trips a memory and a
conversation against the node at --endpoint, and checks error statuses. Exits non-zero on any
failure. Run by tests/python_client.rs, which starts the node.
"""

import argparse
import json
import pathlib
import sys
import tempfile

import grpc
from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROTO = ROOT / "proto"


def generate(out: pathlib.Path) -> None:
    files = sorted(str(p.relative_to(PROTO)) for p in (PROTO / "nexus" / "v1").glob("*.proto"))
    include = pathlib.Path(protoc.__file__).parent / "_proto"
    rc = protoc.main(
        ["grpc_tools.protoc", f"-I{PROTO}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}", *files]
    )
    if rc != 0:
        raise SystemExit(f"protoc failed with {rc}")
    sys.path.insert(0, str(out))


def expect_error(call, code, mentions):
    try:
        call()
    except grpc.RpcError as e:
        assert e.code() == code, f"expected {code}, got {e.code()}: {e.details()}"
        assert mentions in e.details(), f"{e.details()!r} does not mention {mentions!r}"
        return
    raise AssertionError(f"expected {code}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoint", required=True, help="host:port of a nexus node")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        generate(pathlib.Path(tmp))
        from nexus.v1 import cluster_pb2, cluster_pb2_grpc
        from nexus.v1 import conversation_pb2, conversation_pb2_grpc
        from nexus.v1 import memory_pb2, memory_pb2_grpc
        from nexus.v1 import search_pb2, search_pb2_grpc

        channel = grpc.insecure_channel(args.endpoint)
        grpc.channel_ready_future(channel).result(timeout=30)
        memory = memory_pb2_grpc.MemoryServiceStub(channel)
        conversations = conversation_pb2_grpc.ConversationServiceStub(channel)
        search = search_pb2_grpc.SearchServiceStub(channel)
        cluster = cluster_pb2_grpc.ClusterServiceStub(channel)

        status = cluster.Status(cluster_pb2.StatusRequest())
        assert status.role == "leader", status

        # Server reflection as the official Python client speaks it (v1alpha only).
        from google.protobuf.descriptor_pool import DescriptorPool
        from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
            ProtoReflectionDescriptorDatabase,
        )

        reflection = ProtoReflectionDescriptorDatabase(channel)
        services = set(reflection.get_services())
        for name in ("nexus.v1.MemoryService", "nexus.v1.IamService", "grpc.health.v1.Health"):
            assert name in services, f"{name} not in {sorted(services)}"
        assert "nexus.raft.v1.RaftService" not in services, "the internal service is not advertised"
        put_method = DescriptorPool(reflection).FindMethodByName("nexus.v1.MemoryService.Put")
        assert put_method.input_type.full_name == "nexus.v1.PutRequest", put_method.input_type.full_name

        # A memory round trip, with compare-and-set.
        value = {"city": "Lisbon", "tags": ["travel", "2026"], "nested": {"n": 1}}
        put = memory.Put(memory_pb2.PutRequest(namespace="py", key="trip", value=json.dumps(value), expected_version=0))
        assert put.item.version == 1
        got = memory.Get(memory_pb2.GetRequest(namespace="py", key="trip"))
        assert json.loads(got.item.value) == value
        assert got.item.version == 1 and got.item.created_at_ms > 0
        put2 = memory.Put(memory_pb2.PutRequest(namespace="py", key="trip", value='"updated"', expected_version=1))
        assert put2.item.version == 2
        expect_error(
            lambda: memory.Put(memory_pb2.PutRequest(namespace="py", key="trip", value='"x"', expected_version=1)),
            grpc.StatusCode.FAILED_PRECONDITION,
            "expected_version",
        )
        expect_error(
            lambda: memory.Put(memory_pb2.PutRequest(namespace="py", key="k", value="{bad")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "value",
        )
        listed = memory.List(memory_pb2.ListRequest(namespace="py"))
        assert [i.key for i in listed.items] == ["trip"]
        assert json.loads(listed.items[0].value) == "updated"

        # A conversation round trip.
        conv = conversations.CreateConversation(
            conversation_pb2.CreateConversationRequest(title="from python", metadata='{"lang": "py"}')
        )
        assert conv.id and conv.title == "from python"
        appended = conversations.AppendMessages(
            conversation_pb2.AppendMessagesRequest(
                conversation_id=conv.id,
                messages=[
                    conversation_pb2.NewMessage(role="user", content="Which snakes are in Lisbon?"),
                    conversation_pb2.NewMessage(role="assistant", content="None that bite.", output_tokens=5),
                ],
            )
        )
        assert [m.seq for m in appended.messages] == [1, 2]
        msgs = conversations.ListMessages(conversation_pb2.ListMessagesRequest(conversation_id=conv.id))
        assert [(m.role, m.content) for m in msgs.messages] == [
            ("user", "Which snakes are in Lisbon?"),
            ("assistant", "None that bite."),
        ]
        assert msgs.messages[1].HasField("output_tokens") and msgs.messages[1].output_tokens == 5
        assert not msgs.messages[0].HasField("output_tokens")
        fetched = conversations.GetConversation(conversation_pb2.GetConversationRequest(id=conv.id))
        assert fetched.message_count == 2 and json.loads(fetched.metadata) == {"lang": "py"}
        expect_error(
            lambda: conversations.GetConversation(conversation_pb2.GetConversationRequest(id="missing")),
            grpc.StatusCode.NOT_FOUND,
            "missing",
        )

        # Exact words only (BM25); the default also fuses in messages near in meaning.
        hits = search.Search(
            search_pb2.SearchRequest(query="snakes", mode=memory_pb2.RECALL_MODE_BM25)
        ).hits
        assert len(hits) == 1 and hits[0].WhichOneof("item") == "message", hits
        assert hits[0].message.conversation_id == conv.id
        hybrid = search.Search(search_pb2.SearchRequest(query="snakes")).hits
        assert hybrid[0].message.id == hits[0].message.id, hybrid
        assert list(hybrid[0].retrievers) == ["vector", "bm25"], hybrid

        deleted = conversations.DeleteConversation(conversation_pb2.DeleteConversationRequest(id=conv.id))
        assert deleted.deleted_messages == 2
        print("python grpcio client: all round trips passed")


if __name__ == "__main__":
    main()
