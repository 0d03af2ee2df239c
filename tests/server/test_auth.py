"""Tokens, roles and which RPC needs which role (the server end to end: tests/integration)."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.auth import Role, TokenError, TokenTable, bearer_token, load_tokens, required_role

ADMIN = "a" * 24
SHOP = "s" * 24


def test_tokens_file_entries_comments_and_names(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"# who may do what\nadmin {ADMIN} ops\n\nclassify {SHOP}  # the shop\n")
    table = load_tokens(path, None)
    assert table is not None and len(table) == 2
    assert table.identify(ADMIN) is not None
    assert table.identify(ADMIN).name == "ops"  # type: ignore[union-attr]
    shop = table.identify(SHOP)
    assert shop is not None and shop.role is Role.CLASSIFY
    assert shop.name.startswith("classify-") and SHOP not in shop.name  # never the token
    assert table.identify("x" * 24) is None and table.identify(None) is None


def test_inline_tokens_add_to_the_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"admin {ADMIN}\n")
    table = load_tokens(path, f"classify {SHOP} shop")
    assert table is not None and len(table) == 2
    assert load_tokens(None, None) is None


@pytest.mark.parametrize(
    ("entries", "words"),
    [
        ([f"root {ADMIN}"], "unknown role"),
        (["admin short"], "at least 16"),
        ([f"admin {ADMIN}", f"classify {ADMIN}"], "twice"),
        ([f"admin {ADMIN} name extra"], "ROLE TOKEN [NAME]"),
    ],
)
def test_bad_token_entries_are_refused_with_a_reason(entries: list[str], words: str) -> None:
    with pytest.raises(TokenError, match=words.replace("[", r"\[").replace("]", r"\]")):
        TokenTable.parse(entries, "test")


def test_an_empty_tokens_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("# nobody yet\n")
    with pytest.raises(TokenError, match="no tokens"):
        load_tokens(path, None)


def test_roles_of_methods() -> None:
    assert required_role("/nearcat.v1.Nearcat/Classify") is Role.CLASSIFY
    assert required_role("/nearcat.v1.Nearcat/GetStatus") is Role.CLASSIFY
    for method in ("AddCategory", "AddReferences", "RemoveReferences", "DeleteCategory"):
        assert required_role(f"/nearcat.v1.Nearcat/{method}") is Role.ADMIN
    assert required_role("/nearcat.v1.Nearcat/SomethingNew") is Role.ADMIN  # closed by default
    assert required_role("/grpc.health.v1.Health/Check") is None
    assert required_role("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo") is None
    assert Role.ADMIN.allows(Role.CLASSIFY) and not Role.CLASSIFY.allows(Role.ADMIN)


def test_bearer_token_from_metadata() -> None:
    assert bearer_token([("x-request-id", "1"), ("authorization", f"Bearer {ADMIN}")]) == ADMIN
    assert bearer_token([("authorization", f"Basic {ADMIN}")]) is None
    assert bearer_token(None) is None
