"""The web console's pages: Starlette routes rendering Jinja2 templates server-side.

Every action is one or more RPCs of the nearcat server (`Backend`), made with the person's
token, so the server decides what each role may do; the console only leaves out what the
role may not do, and shows a refusal's message as a flash. Forms post and redirect (so a
reload never repeats an action); flashes and claimed review items live in memory, keyed by
a random session cookie, because the console is one process beside its server.
"""

from __future__ import annotations

import datetime as dt
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from server.console.client import CLASSIFY_TIMEOUT_S, Backend, Refused, Who
from server.console.images import ThumbnailCache, data_url, shrink
from server.proto.nearcat.v1 import nearcat_pb2 as pb

HERE = Path(__file__).resolve().parent
TOKEN_COOKIE = "nearcat_token"
SESSION_COOKIE = "nearcat_session"
PAGE_SIZE = 48
MAX_UPLOAD_FILES = 200

Handler = Callable[[Request, "View"], Response]
# Only this console's own script runs, and no other site may frame it (a framed review page
# could be clicked through by someone else's page).
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


@dataclass
class Flash:
    kind: str  # ok, error or info
    text: str
    items: list[tuple[bool, str]] = field(default_factory=list)  # per-file results


@dataclass
class View:
    """What a handler knows about the caller: token, who, session, and the posted form."""

    token: str | None
    who: Who
    session: str
    form: dict[str, str] = field(default_factory=dict)
    files: dict[str, list[tuple[str, bytes]]] = field(default_factory=dict)


def decision_name(value: int) -> str:
    return pb.Decision.Name(value).lower() if value else "none"


def parse_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def parse_metadata(text: str) -> dict[str, str]:
    """``key=value`` lines (or ``key: value``) as a dict; a line without either is refused."""
    metadata: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        key, sep, value = line.partition("=")
        if not sep:
            key, sep, value = line.partition(":")
        if not sep or not key.strip():
            raise ValueError(f"metadata line {number} is not 'key=value': {line.strip()!r}")
        metadata[key.strip()] = value.strip()
    return metadata


def category_tree(categories: list[Any]) -> list[tuple[int, Any, int]]:
    """Categories depth-first under their parents, as (depth, category, total references
    including those of descendants); a category whose parent is unknown is a root."""
    names = {c.name for c in categories}
    children: dict[str, list[Any]] = {}
    for category in categories:
        parent = category.parent if category.parent in names else ""
        children.setdefault(parent, []).append(category)
    totals: dict[str, int] = {}

    def total(category: Any) -> int:
        if category.name not in totals:
            totals[category.name] = category.reference_count + sum(
                total(child) for child in children.get(category.name, [])
            )
        return totals[category.name]

    rows: list[tuple[int, Any, int]] = []

    def walk(parent: str, depth: int) -> None:
        for category in sorted(children.get(parent, []), key=lambda c: c.name.lower()):
            rows.append((depth, category, total(category)))
            if depth < 50:  # a cycle cannot come from the server; never loop on one anyway
                walk(category.name, depth + 1)

    walk("", 0)
    return rows


def reviewed_today(stats: Any, today: str | None = None) -> int:
    today = today or dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    return sum(day.count for day in stats.reviewed_per_day if day.day == today)


def candidates(classification: Any, limit: int = 3) -> list[tuple[Any, list[Any]]]:
    """The top categories of an answer, each with its own nearest references."""
    top = list(classification.categories)[:limit]
    return [
        (score, [n for n in classification.neighbors if n.category == score.category][:4])
        for score in top
    ]


class Console:
    """The console's state (flashes, claimed review items, thumbnails) and its routes."""

    def __init__(self, backend: Backend, secure_cookies: bool = False) -> None:
        self.backend = backend
        self.secure_cookies = secure_cookies
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        self.templates.env.filters["decision"] = decision_name
        self.templates.env.filters["pct"] = lambda v: f"{100 * float(v):.1f}%"
        self.templates.env.filters["quote"] = lambda v: quote(str(v), safe="")
        self.thumbs = ThumbnailCache()
        self._lock = threading.Lock()
        self._flashes: OrderedDict[str, list[Flash]] = OrderedDict()
        # review id -> (session, item): the claimed item, for its page and its image.
        self._reviews: OrderedDict[str, tuple[str, Any]] = OrderedDict()

    # -- plumbing -----------------------------------------------------------------------

    def flash(self, view: View, kind: str, text: str, items: list[tuple[bool, str]] | None = None):
        with self._lock:
            self._flashes.setdefault(view.session, []).append(Flash(kind, text, items or []))
            self._flashes.move_to_end(view.session)
            while len(self._flashes) > 1000:
                self._flashes.popitem(last=False)

    def render(self, request: Request, view: View, template: str, **context: Any) -> Response:
        with self._lock:
            flashes = self._flashes.pop(view.session, [])
        return self.templates.TemplateResponse(
            request,
            template,
            {"who": view.who, "flashes": flashes, "path": request.url.path, **context},
        )

    def route(self, handler: Handler, role: str = "classify", login: bool = True):
        """An endpoint: finds who calls (redirecting to the login page when the server wants
        a token), checks the role, reads a posted form, runs `handler` in a thread (gRPC
        blocks) and keeps the session cookie."""

        async def endpoint(request: Request) -> Response:
            if request.method == "POST" and not same_origin(request):
                return Response("cross-site form refused", status_code=403)
            session = request.cookies.get(SESSION_COOKIE) or secrets.token_urlsafe(16)
            token = request.cookies.get(TOKEN_COOKIE) or None
            view = View(token, Who("", "", False), session)
            response: Response
            try:
                if request.method == "POST":
                    view.form, view.files = await read_form(request)
            except (HTTPException, MultiPartException) as error:  # e.g. too many files
                detail = getattr(error, "detail", None) or getattr(error, "message", "")
                self.flash(view, "error", f"the form was not read: {detail}")
                response = RedirectResponse(back(request), status_code=303)
            else:
                response = await run_in_threadpool(
                    self._guarded, handler, request, view, role, login
                )
            response.headers.update(SECURITY_HEADERS)
            if request.cookies.get(SESSION_COOKIE) != session:
                response.set_cookie(
                    SESSION_COOKIE, session, httponly=True, samesite="strict",
                    secure=self.secure_cookies,
                )  # fmt: skip
            return response

        return endpoint

    def _guarded(self, handler: Handler, request: Request, view: View, role: str, login: bool):
        if login:
            try:
                view.who = self.backend.whoami(view.token)
            except Refused as refused:
                if refused.code == "UNAUTHENTICATED":
                    if view.token:
                        self.flash(view, "error", f"the server refused the token: {refused}")
                    return RedirectResponse("/login", status_code=303)
                return self.render(request, view, "error.html", message=str(refused))
            if not view.who.can(role):
                self.flash(view, "error", f"your role ({view.who.role}) may not open that page")
                return RedirectResponse("/", status_code=303)
        try:
            return handler(request, view)
        except Refused as refused:
            if refused.code == "UNAUTHENTICATED":
                self.backend.forget(view.token)
                return RedirectResponse("/login", status_code=303)
            if request.method == "GET":  # a page that cannot be shown: say why elsewhere
                if request.url.path == "/":
                    return self.render(request, view, "error.html", message=str(refused))
                self.flash(view, "error", str(refused))
                return RedirectResponse("/", status_code=303)
            self.flash(view, "error", str(refused))  # an action: back to its page
            return RedirectResponse(back(request), status_code=303)

    def call(self, view: View, method: str, request: Any, **kwargs: Any) -> Any:
        return self.backend.call(method, request, view.token, **kwargs)

    def routes(self) -> list[Route | Mount]:
        r = self.route
        return [
            Route("/login", r(self.login_page, login=False), methods=["GET", "POST"]),
            Route("/logout", r(self.logout, login=False), methods=["POST"]),
            Route("/", r(self.catalogue)),
            Route("/categories", r(self.create_category, "admin"), methods=["POST"]),
            Route("/category", r(self.category_page)),
            Route("/category/references", r(self.add_references, "admin"), methods=["POST"]),
            Route("/category/remove", r(self.remove_reference, "admin"), methods=["POST"]),
            Route("/category/update", r(self.update_category, "admin"), methods=["POST"]),
            Route("/category/delete", r(self.delete_category, "admin"), methods=["POST"]),
            Route("/thumb/{reference_id}", r(self.thumbnail)),
            Route("/try", r(self.try_page), methods=["GET", "POST"]),
            Route("/review", r(self.review_page, "reviewer"), methods=["GET", "POST"]),
            Route("/review/image/{review_id}", r(self.review_image, "reviewer")),
            Route("/health", r(self.health_page)),
            # Browsers ask for it on their own (an image opened by itself, say): a 404 there
            # would be an error in every such tab's console.
            Route("/favicon.ico", lambda _: FileResponse(HERE / "static" / "favicon.svg")),
            Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
        ]

    # -- login ------------------------------------------------------------------------

    def login_page(self, request: Request, view: View) -> Response:
        if request.method == "GET":
            try:  # auth off (or a valid cookie): no login needed
                view.who = self.backend.whoami(view.token)
                return RedirectResponse("/", status_code=303)
            except Refused as refused:
                if refused.code != "UNAUTHENTICATED":
                    return self.render(request, view, "error.html", message=str(refused))
            return self.render(request, view, "login.html")
        token = view.form.get("token", "").strip()
        try:
            who = self.backend.whoami(token, fresh=True)
        except Refused as refused:
            self.flash(view, "error", f"not logged in: {refused}")
            return RedirectResponse("/login", status_code=303)
        view.who = who
        self.flash(view, "ok", f"logged in as {who.name} ({who.role})")
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            TOKEN_COOKIE, token, httponly=True, samesite="strict", secure=self.secure_cookies
        )
        return response

    def logout(self, request: Request, view: View) -> Response:
        self.backend.forget(view.token)
        self.flash(view, "ok", "logged out")
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(TOKEN_COOKIE)
        return response

    # -- catalogue ----------------------------------------------------------------------

    def catalogue(self, request: Request, view: View) -> Response:
        categories = list(self.call(view, "ListCategories", pb.ListCategoriesRequest()).categories)
        query = request.query_params.get("q", "").strip()
        search = None
        if query:
            try:
                search = self.call(view, "SearchByText", pb.SearchByTextRequest(text=query))
            except Refused as refused:
                self.flash(view, "error", f"search by text: {refused}")
        return self.render(
            request,
            view,
            "catalogue.html",
            rows=category_tree(categories),
            categories=categories,
            query=query,
            search=search,
        )

    def create_category(self, request: Request, view: View) -> Response:
        name = view.form.get("name", "").strip()
        parent = view.form.get("parent", "").strip()
        try:
            metadata = parse_metadata(view.form.get("metadata", ""))
        except ValueError as error:
            self.flash(view, "error", str(error))
            return RedirectResponse("/", status_code=303)
        self.call(
            view,
            "AddCategory",
            pb.AddCategoryRequest(
                name=name,
                parent=parent,
                prompts=parse_lines(view.form.get("prompts", "")),
                metadata=metadata,
            ),
        )
        photos = view.files.get("photos", [])
        if photos:
            self._upload(view, name, photos, created=True)
        else:
            self.flash(view, "ok", f"created {name}")
        return RedirectResponse(f"/category?name={quote(name, safe='')}", status_code=303)

    def _upload(self, view: View, name: str, photos: list[tuple[str, bytes]], created=False):
        """One AddReferences per photo, so a bad photo is refused alone, with its reason."""
        results: list[tuple[bool, str]] = []
        added = duplicates = 0
        for filename, data in photos[:MAX_UPLOAD_FILES]:
            request = pb.AddReferencesRequest(
                category=name,
                references=[pb.ReferenceImage(image=data, metadata={"source": filename})],
            )
            try:
                answer = self.call(view, "AddReferences", request)
            except Refused as refused:
                results.append((False, f"{filename}: {refused}"))
                continue
            if answer.duplicates:
                duplicates += 1
                results.append((True, f"{filename}: already a reference (duplicate)"))
            else:
                added += 1
                results.append((True, f"{filename}: added"))
        refused_count = len(results) - added - duplicates
        if len(photos) > MAX_UPLOAD_FILES:
            results.append((False, f"{len(photos) - MAX_UPLOAD_FILES} more files not sent"))
        summary = f"{'created ' + name + ': ' if created else ''}{added} added"
        if duplicates:
            summary += f", {duplicates} duplicate"
        if refused_count:
            summary += f", {refused_count} refused"
        self.flash(view, "error" if refused_count else "ok", summary, results)

    def category_page(self, request: Request, view: View) -> Response:
        name = request.query_params.get("name", "")
        offset = max(0, int_param(request.query_params.get("offset"), 0))
        answer = self.call(
            view,
            "GetCategory",
            pb.GetCategoryRequest(
                name=name, include_references=True, offset=offset, limit=PAGE_SIZE
            ),
        )
        references = list(answer.references)
        if len(references) > PAGE_SIZE:  # a server that does not page yet sends them all
            references = references[offset : offset + PAGE_SIZE]
        category = answer.category
        categories = []
        if view.who.can("admin"):  # for the move form
            request_all = pb.ListCategoriesRequest()
            categories = list(self.call(view, "ListCategories", request_all).categories)
        total = category.reference_count
        return self.render(
            request,
            view,
            "category.html",
            category=category,
            references=references,
            offset=offset,
            total=total,
            page_size=PAGE_SIZE,
            parents=[c.name for c in categories if c.name != category.name],
            metadata_text="\n".join(f"{k}={v}" for k, v in sorted(category.metadata.items())),
        )

    def add_references(self, request: Request, view: View) -> Response:
        name = view.form.get("name", "")
        photos = view.files.get("photos", [])
        if not photos:
            self.flash(view, "error", "choose or drop some photos first")
        else:
            self._upload(view, name, photos)
        return RedirectResponse(f"/category?name={quote(name, safe='')}", status_code=303)

    def remove_reference(self, request: Request, view: View) -> Response:
        name = view.form.get("name", "")
        reference_id = view.form.get("reference_id", "")
        answer = self.call(
            view, "RemoveReferences", pb.RemoveReferencesRequest(reference_ids=[reference_id])
        )
        self.flash(view, "ok", f"removed {answer.removed} reference ({reference_id})")
        return RedirectResponse(back(request, f"/category?name={quote(name, safe='')}"), 303)

    def update_category(self, request: Request, view: View) -> Response:
        name = view.form.get("name", "")
        current = self.call(view, "GetCategory", pb.GetCategoryRequest(name=name)).category
        update = pb.UpdateCategoryRequest(name=name)
        changes = []
        new_name = view.form.get("new_name", "").strip()
        if new_name and new_name != name:
            update.new_name = new_name
            changes.append(f"renamed to {new_name}")
        parent = view.form.get("parent", "").strip()
        if "parent" in view.form and parent != current.parent:
            update.parent = parent
            changes.append(f"moved under {parent}" if parent else "moved to the top level")
        prompts = parse_lines(view.form.get("prompts", ""))
        if "prompts" in view.form and prompts != list(current.prompts):
            update.set_prompts = True
            update.prompts.extend(prompts)
            changes.append(f"{len(prompts)} prompts")
        if "metadata" in view.form:
            try:
                metadata = parse_metadata(view.form["metadata"])
            except ValueError as error:
                self.flash(view, "error", str(error))
                return RedirectResponse(f"/category?name={quote(name, safe='')}", 303)
            if metadata != dict(current.metadata):
                update.set_metadata = True
                update.metadata.update(metadata)
                changes.append("metadata")
        if not changes:
            self.flash(view, "info", "nothing changed")
            return RedirectResponse(f"/category?name={quote(name, safe='')}", 303)
        answer = self.call(view, "UpdateCategory", update)
        self.flash(view, "ok", f"{name}: " + ", ".join(changes))
        return RedirectResponse(f"/category?name={quote(answer.category.name, safe='')}", 303)

    def delete_category(self, request: Request, view: View) -> Response:
        name = view.form.get("name", "")
        answer = self.call(view, "DeleteCategory", pb.DeleteCategoryRequest(name=name))
        self.flash(view, "ok", f"deleted {name} and its {answer.references_removed} references")
        return RedirectResponse("/", status_code=303)

    def thumbnail(self, request: Request, view: View) -> Response:
        reference_id = request.path_params["reference_id"]
        data = self.thumbs.get(reference_id)
        if data is None:
            try:
                answer = self.call(
                    view,
                    "GetReferenceImage",
                    pb.GetReferenceImageRequest(reference_id=reference_id),
                )
                data = shrink(answer.image)
            except Refused as refused:
                return placeholder(refused.code)
            except OSError:  # Pillow cannot read it: the server accepted it, so rare
                return placeholder("unreadable")
            self.thumbs.put(reference_id, data)
        return Response(
            data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"}
        )

    # -- try it -------------------------------------------------------------------------

    def try_page(self, request: Request, view: View) -> Response:
        if request.method == "GET":
            return self.render(request, view, "try.html", result=None)
        photos = view.files.get("photo", [])
        if not photos:
            self.flash(view, "error", "choose or drop a photo first")
            return RedirectResponse("/try", status_code=303)
        filename, data = photos[0]
        try:
            answer = self.call(
                view,
                "Classify",
                pb.ClassifyRequest(image=data, skip_review=True),
                timeout=CLASSIFY_TIMEOUT_S,
            )
        except Refused as refused:
            self.flash(view, "error", f"{filename}: {refused}")
            return RedirectResponse("/try", status_code=303)
        try:
            preview = data_url(data)
        except OSError:
            preview = ""
        # Rendered in answer to the POST: the photo is not kept anywhere.
        return self.render(
            request, view, "try.html", result=answer, filename=filename, preview=preview
        )

    # -- review ------------------------------------------------------------------------

    def _claimed(self, view: View) -> Any | None:
        """The item this session holds, while its lease lasts (a minute's margin)."""
        soon = time.time() * 1000 + 60_000
        with self._lock:
            for review_id, (session, item) in list(self._reviews.items()):
                if session != view.session:
                    continue
                if item.lease_until_ms and item.lease_until_ms < soon:
                    del self._reviews[review_id]  # lapsing: claim afresh
                    continue
                return item
        return None

    def _forget_review(self, review_id: str) -> None:
        with self._lock:
            self._reviews.pop(review_id, None)

    def review_page(self, request: Request, view: View) -> Response:
        if request.method == "POST":
            return self._verdict(request, view)
        item = self._claimed(view)
        pending: int | None = None
        if item is None:
            claim = self.call(
                view,
                "ClaimReviews",
                pb.ClaimReviewsRequest(max_items=1, reviewer=reviewer_name(view)),
            )
            pending = claim.pending
            if claim.items:
                item = claim.items[0]
                with self._lock:
                    self._reviews[item.id] = (view.session, item)
                    while len(self._reviews) > 500:
                        self._reviews.popitem(last=False)
        stats = None
        try:
            stats = self.call(view, "GetReviewStats", pb.GetReviewStatsRequest())
            pending = stats.pending
        except Refused as refused:
            self.flash(view, "info", f"review statistics: {refused}")
        categories = list(self.call(view, "ListCategories", pb.ListCategoriesRequest()).categories)
        return self.render(
            request,
            view,
            "review.html",
            item=item,
            candidates=candidates(item.classification) if item is not None else [],
            pending=pending,
            today=reviewed_today(stats) if stats is not None else None,
            categories=[c.name for c in categories],
        )

    def _verdict(self, request: Request, view: View) -> Response:
        review_id = view.form.get("review_id", "")
        action = view.form.get("action", "")
        verdict = pb.SubmitVerdictRequest(review_id=review_id, reviewer=reviewer_name(view))
        if action == "skip":
            verdict.skip = True
        elif action == "none":
            verdict.none_of_these.new_category = view.form.get("new_category", "").strip()
            verdict.none_of_these.parent = view.form.get("parent", "").strip()
        elif action == "category" and view.form.get("category", "").strip():
            verdict.category = view.form["category"].strip()
        else:
            self.flash(view, "error", "pick a category, none of these, or skip")
            return RedirectResponse("/review", status_code=303)
        try:
            answer = self.call(view, "SubmitVerdict", verdict)
        except Refused as refused:
            if refused.code in ("NOT_FOUND", "ALREADY_EXISTS", "FAILED_PRECONDITION"):
                self._forget_review(review_id)  # gone or decided: move on to the next one
            raise
        self._forget_review(review_id)
        text = answer.message or (
            "skipped" if action == "skip" else f"saved: {answer.category or 'none of these'}"
        )
        self.flash(view, "ok", text)
        return RedirectResponse("/review", status_code=303)

    def review_image(self, request: Request, view: View) -> Response:
        with self._lock:
            claimed = self._reviews.get(request.path_params["review_id"])
        if claimed is None or claimed[0] != view.session:
            return placeholder("gone")
        return Response(claimed[1].image, media_type=sniff(claimed[1].image))

    # -- health -------------------------------------------------------------------------

    def health_page(self, request: Request, view: View) -> Response:
        status = self.call(view, "GetStatus", pb.GetStatusRequest())
        problems: list[str] = []
        stats = status.review if status.HasField("review") else None
        if view.who.can("reviewer"):
            try:
                stats = self.call(view, "GetReviewStats", pb.GetReviewStatsRequest())
            except Refused as refused:
                problems.append(f"review statistics: {refused}")
        reindex = None
        try:
            reindex = self.call(view, "GetReindexStatus", pb.GetReindexStatusRequest())
        except Refused as refused:
            problems.append(f"reindex status: {refused}")
        return self.render(
            request,
            view,
            "health.html",
            status=status,
            stats=stats,
            reindex=reindex,
            reindex_state=pb.ReindexState.Name(reindex.state) if reindex else "",
            problems=problems,
            started=dt.datetime.fromtimestamp(status.started_at_ms / 1000, dt.UTC),
        )


# -- helpers --------------------------------------------------------------------------


def reviewer_name(view: View) -> str:
    """Who claims and decides: with tokens the server knows (the token's name); without,
    each browser session is its own reviewer, so two people never share a lease."""
    return "" if view.who.auth_enabled else f"console-{view.session[:8]}"


def int_param(value: str | None, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


def back(request: Request, default: str = "/") -> str:
    """The page a form was posted from (same origin only), else `default`."""
    referer = request.headers.get("referer", "")
    parts = urlsplit(referer)
    if referer and parts.netloc == request.headers.get("host", ""):
        return parts.path + (f"?{parts.query}" if parts.query else "")
    return default


def same_origin(request: Request) -> bool:
    """A form post from another site is refused: with auth off no cookie would stop it."""
    origin = request.headers.get("origin")
    if not origin or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == request.headers.get("host", "")


async def read_form(request: Request) -> tuple[dict[str, str], dict[str, list[tuple[str, bytes]]]]:
    async with request.form(max_files=MAX_UPLOAD_FILES + 1, max_fields=200) as form:
        fields: dict[str, str] = {}
        files: dict[str, list[tuple[str, bytes]]] = {}
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if value.filename:  # an empty file input posts a nameless part
                    files.setdefault(key, []).append((value.filename, await value.read()))
            else:
                fields[key] = value
        return fields, files


def sniff(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data[8:12] == b"WEBP":
        return "image/webp"
    return "image/jpeg"


def placeholder(text: str) -> Response:
    """A grey square naming why there is no image, instead of a broken image icon."""
    svg = (
        '<svg xmlns="http://www.w3.org/2000/svg" width="160" height="160">'
        '<rect width="100%" height="100%" fill="#ddd"/>'
        '<text x="50%" y="50%" font-size="13" text-anchor="middle" fill="#555" '
        f'font-family="sans-serif">{text.lower()[:20]}</text></svg>'
    )
    return Response(svg, media_type="image/svg+xml", headers={"Cache-Control": "no-store"})


def build_app(backend: Backend, secure_cookies: bool = False) -> Starlette:
    console = Console(backend, secure_cookies)
    app = Starlette(routes=console.routes())
    app.state.console = console
    return app
