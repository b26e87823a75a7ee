"""Vocabularies: shipped files, the data model, loading/validation errors, text normalisation, parsing, filters,
the cached/retrying chat client (against a loopback stub server) and `failmode vocab show/diff/validate`."""

from __future__ import annotations

import copy
import http.server
import json
import threading
from pathlib import Path

import pytest

from failmode.errors import FailmodeError, UsageError, ValidationError
from failmode.testing import CIFAR10_CLASSES
from failmode.vocab import Vocabulary, from_dict, load_vocabulary, shipped_vocabularies, text, validate
from failmode.vocab.build import BuildConfig, VocabularyBuilder, build_vocabulary, resolve_classes
from failmode.vocab.classnames import ClassInfo, class_infos
from failmode.vocab.kinds import get_kind
from failmode.vocab.llm import ChatClient
from failmode.vocab.parse import parse_list
from failmode.vocab.views import diff_vocabularies, format_diff

CIFAR100_FIRST = ["apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle"]


def run_vocab(argv: list[str]) -> int:
    """Run `failmode vocab ARGV` through the real command line entry point; returns the exit code."""
    from failmode import cli

    return cli.main(["vocab", *argv])


# -- shipped vocabularies ---------------------------------------------------------------------------------------

def test_expected_vocabularies_are_shipped():
    assert {("cifar10", "background"), ("cifar10", "color"), ("cifar100", "background"), ("cifar100", "color"),
            ("imagenet-1k", "background")} <= set(shipped_vocabularies())


@pytest.mark.parametrize(("dataset", "kind"), shipped_vocabularies())
def test_shipped_vocabulary_is_valid(dataset, kind):
    vocab = load_vocabulary(dataset, kind)
    validate(vocab, min_contexts=6, max_contexts=12)  # coverage of every class, bounds, duplicates, provenance
    assert (vocab.dataset, vocab.kind) == (dataset, kind)
    assert vocab.indices == list(range(len(class_infos(dataset))))
    for key in ("generator", "prompt", "date", "post_processing"):
        assert vocab.provenance[key]
    for c in vocab.classes:
        keys = [text.norm_key(x) for x in c.contexts]
        assert len(set(keys)) == len(keys) and all(keys)
        assert 6 <= len(c.contexts) <= 12


def test_cifar_class_names_are_the_hub_names():
    assert load_vocabulary("cifar10").class_names == CIFAR10_CLASSES
    names = load_vocabulary("cifar100", "color").class_names
    assert len(names) == 100 and names[:10] == CIFAR100_FIRST and names[-1] == "worm"
    fish = load_vocabulary("cifar100").get(1)
    assert (fish.name, fish.prompt_name) == ("aquarium_fish", "aquarium fish")


def test_cifar_provenance_is_dated_and_honest():
    for dataset, kind in [("cifar10", "background"), ("cifar100", "color")]:
        prov = load_vocabulary(dataset, kind).provenance
        assert prov["date"] == "2026-11-22"
        assert "no API endpoint was reachable" in prov["generator"]
        assert "uncommon" in prov["prompt"]


def test_imagenet_vocabulary_matches_timm_names():
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    vocab = load_vocabulary("imagenet-1k")
    assert len(vocab.classes) == 1000
    firsts = [d.split(",")[0].strip() for d in info.label_descriptions()]
    assert [n.split(",")[0] for n in vocab.class_names] == firsts
    assert [c.id for c in vocab.classes] == info.label_names()
    # the two "crane" and two "maillot": the later one of each is spelled with its synonyms, everywhere the same
    assert len(set(vocab.class_names)) == 1000
    assert (vocab.get(134).name, vocab.get(517).name) == ("crane", "crane, construction crane")
    assert (vocab.get(638).name, vocab.get(639).name) == ("maillot", "maillot, tank suit")
    assert vocab.label_names()[517] == "crane, construction crane" and len(set(vocab.label_names())) == 1000


def test_common_contexts_are_not_shipped_as_uncommon():
    ship = load_vocabulary("cifar10").contexts(8)
    frog = load_vocabulary("cifar10").contexts(6)
    assert not {"on the sea", "in the ocean", "in a harbor"} & set(ship)
    assert not {"in a pond", "on a lily pad"} & set(frog)
    assert not any(text.content_tokens(x)[-1] in {"sea", "ocean", "harbor"} for x in ship)
    orange_colors = load_vocabulary("cifar100", "color").contexts(53)
    assert all("orange" not in x for x in orange_colors)


# -- data model -------------------------------------------------------------------------------------------------

def test_contexts_and_prompts():
    vocab = load_vocabulary("cifar10")
    assert vocab.contexts(3)[0] == "in a snowy forest"
    assert vocab.prompt(3, "in a desert") == "a photo of a cat in a desert"
    assert vocab.prompt(3, None) == "a photo of a cat"
    fish = load_vocabulary("cifar100", "color")
    assert fish.prompt(1, "that is hot pink") == "a photo of an aquarium fish that is hot pink"
    with pytest.raises(ValidationError, match="no class with index 10"):
        vocab.contexts(10)


def _doc(**over) -> dict:
    doc = load_vocabulary("cifar10").to_dict()
    doc.update(over)
    return copy.deepcopy(doc)


def test_round_trip_is_byte_stable(tmp_path):
    vocab = load_vocabulary("cifar10", "color")
    out = vocab.save(tmp_path / "v.json")
    again = load_vocabulary(out)
    assert again == vocab
    assert again.save(tmp_path / "w.json").read_bytes() == out.read_bytes()


def test_bad_json_names_the_file(tmp_path):
    p = tmp_path / "broken.json"
    p.write_text('{"format": ')
    with pytest.raises(ValidationError, match=r"broken\.json: invalid JSON"):
        load_vocabulary(p)


def test_unknown_class_names_file_and_class(tmp_path):
    doc = _doc()
    doc["classes"][3]["name"] = "kitten"
    p = tmp_path / "v.json"
    p.write_text(json.dumps(doc))
    with pytest.raises(ValidationError, match=r"v\.json: class 3 'kitten': unknown class for cifar10 \(expected 'cat'\)"):
        load_vocabulary(p)


def test_empty_class_names_file_and_class(tmp_path):
    doc = _doc()
    doc["classes"][5]["contexts"] = []
    p = tmp_path / "v.json"
    p.write_text(json.dumps(doc))
    with pytest.raises(ValidationError, match=r"v\.json: class 5 'dog': 'contexts' must be a non-empty list"):
        load_vocabulary(p)


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda d: d.update(format="other/1"), "'format' must be"),
    (lambda d: d.update(kind="smell"), "unknown kind 'smell'"),
    (lambda d: d.update(template="a photo of {context}"), "template must contain"),
    (lambda d: d["classes"].reverse(), "strictly increasing index order"),
    (lambda d: d["classes"][0].update(index=-1), r"classes\[0\]: index must be an integer >= 0, not -1"),
    (lambda d: d["classes"][2]["contexts"].append(""), "class 2 'bird': every context must be a non-empty string"),
])
def test_structural_errors(mutate, message):
    doc = _doc()
    mutate(doc)
    with pytest.raises(ValidationError, match=message):
        from_dict(doc, source="x.json")


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda d: d["classes"].pop(4), "class 4 'deer' is missing"),
    (lambda d: d["classes"][0].update(contexts=["in a desert", "in a cave"]), r"2 contexts \(need 6-12\)"),
    (lambda d: d["classes"][0]["contexts"].__setitem__(0, "desert"), "is not phrased as a background entry"),
    (lambda d: d["provenance"].pop("prompt"), "provenance lacks 'prompt'"),
    (lambda d: d["provenance"].update(date="22/11/2026"), "is not YYYY-MM-DD"),
])
def test_validate_errors(mutate, message):
    doc = _doc()
    mutate(doc)
    vocab = from_dict(doc, source="x.json")
    with pytest.raises(ValidationError, match=message):
        validate(vocab)


def test_validate_duplicate_after_normalisation_names_both():
    doc = _doc()
    doc["classes"][0]["contexts"][:2] = ["in a desert", "in the deserts"]
    with pytest.raises(ValidationError, match="'in a desert' and 'in the deserts' are duplicates"):
        validate(from_dict(doc, source="x.json"))


def test_validate_partial_and_custom_class_names():
    doc = _doc()
    doc["classes"] = doc["classes"][:3]
    vocab = from_dict(doc)
    with pytest.raises(ValidationError, match="class 3 'cat' is missing"):
        validate(vocab)
    validate(vocab, complete=False)
    validate(vocab, class_names=CIFAR10_CLASSES[:3])


def test_unknown_shipped_name_is_a_usage_error():
    with pytest.raises(UsageError, match="no shipped color vocabulary for 'imagenet-1k'"):
        load_vocabulary("imagenet-1k", "color")


# -- text normalisation and phrasing ----------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "phrased"), [
    ("Deserts", "in a desert"), ("rain forests", "in a rain forest"), ("urban areas", "in an urban area"),
    ("mountain peaks", "on a mountain peak"), ("frozen lakes", "on a frozen lake"), ("the moon", "on the moon"),
    ("outer space", "in outer space"), ("In a restaurant.", "in a restaurant"), ("an airport", "at an airport"),
    ("busy streets", "on a busy street"),
])
def test_phrase_background(raw, phrased):
    assert text.phrase_background(raw) == phrased


def test_phrase_color_and_colour_check():
    assert text.phrase_color("Bright Pink") == "that is bright pink"
    assert text.phrase_color("in neon green") == "that is neon green"
    assert text.phrase_color("That is gold") == "that is gold"
    assert get_kind("color").extra_check("that is john") == "names no colour"
    assert get_kind("color").extra_check("that is rainbow-striped") is None


def test_norm_key_and_near_duplicates():
    assert text.norm_key("in the Deserts") == text.norm_key("on a desert") == "desert"
    assert text.near_duplicate("in a rainforest", "in a rain forest")
    assert text.near_duplicate("in a forest", "in a dense forest")
    assert text.near_duplicate("in a dessert", "in a desert")
    assert not text.near_duplicate("in a busy street", "in a city park")
    assert text.singular("beaches") == "beach" and text.singular("cities") == "city" and text.singular("glass") == "glass"


# -- parsing LLM answers ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("answer", "items"), [
    ("1. Desert\n2. Rain forests\n3) Caves", ["desert", "rain forests", "caves"]),
    ("Here are some uncommon backgrounds:\n- **Desert**: hot and dry\n- Glacier - very cold\n* cave (dark)",
     ["desert", "glacier", "cave"]),
    ('{"backgrounds": ["desert", "cave", "desert"]}', ["desert", "cave"]),
    ('Sure! ["in a desert", "on a glacier"]', ["in a desert", "on a glacier"]),
    ("desert, rain forest; cave and glacier", ["desert", "rain forest", "cave", "glacier"]),
    ("Sea lions can appear in deserts, caves and volcanic areas.", ["deserts", "caves", "volcanic areas"]),
    ("1. desert\n2. desert\n3. a very long sentence that goes on and on about nothing in particular at all",
     ["desert"]),
])
def test_parse_list(answer, items):
    assert parse_list(answer) == items


# -- vetting candidates -----------------------------------------------------------------------------------------

def test_judge_rejects_with_reasons():
    builder = VocabularyBuilder(BuildConfig("cifar10"), client=None)  # judging needs no client
    ship = class_infos("cifar10")[8]
    common = ["on the sea", "in a harbor"]
    judge = lambda e, acc=(): builder.judge(e, ship, common, list(acc))  # noqa: E731
    assert judge("in a desert") is None
    assert judge("on a ship deck") == "restates the class"
    assert judge("at sea") == "common context (on the sea)"
    assert judge("in a busy harbor") == "common context (in a harbor)"
    assert judge("in an unusual place") == "generic"
    assert judge("in a snowy desert", ["in a desert"]) == "duplicate (in a desert)"
    assert judge("in a mountain mountain") == "repeats a word"
    assert judge("in a 3d world") == "not a phrase"


def test_resolve_classes():
    assert [c.index for c in resolve_classes("cifar10", ["cat,8", "dog"])] == [3, 5, 8]
    with pytest.raises(UsageError, match="unknown class 'kitten'"):
        resolve_classes("cifar10", ["kitten"])
    with pytest.raises(UsageError, match="out of range"):
        resolve_classes("cifar10", ["10"])
    infos = [ClassInfo(0, "crane", "crane bird"), ClassInfo(1, "crane", "construction crane")]
    with pytest.raises(UsageError, match="ambiguous"):
        resolve_classes("x", ["crane"], infos)
    assert resolve_classes("x", ["construction crane"], infos) == [infos[1]]


# -- chat client against a loopback stub server ------------------------------------------------------------------

STUB_ANSWER = "1. desert\n2. glacier\n3. cave\n4. volcanic area\n5. subway tunnel\n6. rooftop garden"


class _Stub(http.server.BaseHTTPRequestHandler):
    """An OpenAI-compatible stub: scripted status codes, records request bodies."""

    script: list[int] = []
    bodies: list[dict] = []
    answer = ""
    html = False

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).bodies.append(body)
        status = type(self).script.pop(0) if type(self).script else 200
        if status == 400 or (status == 200 and "response_format" in body):
            status, payload = 400, {"error": {"message": "response_format not supported", "type": "invalid"}}
        elif status != 200:
            payload = {"error": {"message": "overloaded", "type": "server_error"}}
        else:
            content = "1. on the sea\n2. harbor" if "most common" in body["messages"][-1]["content"] else self.answer
            payload = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                       "choices": [{"index": 0, "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": content}}]}
        data = b"<html><body>502 Bad Gateway</body></html>" if self.html else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html" if self.html else "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def stub():
    _Stub.script, _Stub.bodies, _Stub.answer, _Stub.html = [], [], STUB_ANSWER, False
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()
    server.server_close()


def test_client_retries_with_backoff_then_caches(stub, tmp_path):
    _Stub.script = [500, 503]
    client = ChatClient(stub, "m", cache_dir=tmp_path, backoff=0.01, max_retries=3)
    request = {"messages": [{"role": "user", "content": "hi"}], "temperature": 0.0, "seed": 1, "max_tokens": 10}
    first = client.complete(request)
    assert first.text.startswith("1. desert") and not first.cached
    assert (client.stats.requests, client.stats.retries, len(_Stub.bodies)) == (3, 2, 3)
    again = client.complete(request)
    assert again.cached and again.text == first.text
    assert (client.stats.requests, client.stats.cache_hits, len(_Stub.bodies)) == (3, 1, 3)
    other_model = ChatClient(stub, "m2", cache_dir=tmp_path)
    other_model.complete(request)
    assert other_model.stats.requests == 1  # the cache key includes the model


def test_empty_answers_are_not_cached_and_html_is_one_line(stub, tmp_path):
    request = {"messages": [{"role": "user", "content": "hi"}], "temperature": 0.0, "seed": 1}
    _Stub.answer = ""
    assert ChatClient(stub, "m", cache_dir=tmp_path).complete(request).text == ""
    _Stub.answer = "1. on snow"  # the server is fixed: the rerun asks again instead of reading the empty answer
    fixed = ChatClient(stub, "m", cache_dir=tmp_path)
    assert fixed.complete(request).text == "1. on snow" and fixed.stats.requests == 1
    _Stub.html = True
    with pytest.raises(FailmodeError, match="not a chat completion") as e:
        ChatClient(stub, "m", cache_dir=tmp_path / "other").complete(request)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("kwargs, message", [({"timeout": -1}, "--timeout must be > 0"),
                                             ({"max_retries": -1}, "--retries must be >= 0")])
def test_client_settings_are_checked(kwargs, message, tmp_path):
    from failmode.errors import UsageError

    with pytest.raises(UsageError, match=message):
        ChatClient("http://127.0.0.1:9/v1", "m", cache_dir=tmp_path, **kwargs)


def test_structured_output_rejection_is_remembered_per_endpoint(stub, tmp_path):
    from failmode.vocab.llm import StructuredOutputUnsupported

    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    client = ChatClient(stub, "m", cache_dir=tmp_path)
    with pytest.raises(StructuredOutputUnsupported):
        client.complete({"messages": [{"role": "user", "content": "a"}], "response_format": fmt})
    other = ChatClient(stub, "m", cache_dir=tmp_path)  # another prompt, a later run: no request is sent
    with pytest.raises(StructuredOutputUnsupported, match="cached"):
        other.complete({"messages": [{"role": "user", "content": "b"}], "response_format": fmt})
    assert (client.stats.requests, other.stats.requests, len(_Stub.bodies)) == (1, 0, 1)


def test_client_gives_up_with_one_line_error(stub, tmp_path):
    _Stub.script = [500, 500, 500]
    client = ChatClient(stub, "m", cache_dir=tmp_path, backoff=0.01, max_retries=2)
    with pytest.raises(FailmodeError, match="after 3 attempts"):
        client.complete({"messages": [{"role": "user", "content": "hi"}]})


def test_build_falls_back_to_free_text_and_filters(stub, tmp_path):
    client = ChatClient(stub, "m", cache_dir=tmp_path, backoff=0.01)
    cfg = BuildConfig("cifar10", min_contexts=3, max_contexts=5, rounds=2, structured=True, concurrency=2)
    report = build_vocabulary(cfg, client, resolve_classes("cifar10", ["ship", "cat"]))
    assert any("response_format" in b for b in _Stub.bodies)  # tried structured output first
    vocab = report.vocabulary
    assert vocab.indices == [3, 8]
    assert vocab.contexts(8) == ["in a desert", "on a glacier", "in a cave", "in a volcanic area", "in a subway tunnel"]
    validate(vocab, min_contexts=3, max_contexts=5, complete=False)
    assert report.short == [] and "2/2 classes reached 3" in report.summary()
    sent = report.requests
    rerun = build_vocabulary(cfg, ChatClient(stub, "m", cache_dir=tmp_path), resolve_classes("cifar10", ["ship", "cat"]))
    assert rerun.requests == 0 and rerun.cache_hits > 0 and rerun.vocabulary.to_dict() == vocab.to_dict()
    assert len(_Stub.bodies) == sent


def test_build_reports_classes_that_fall_short(stub, tmp_path):
    _Stub.answer = "1. desert\n2. the desert\n3. deserts"
    client = ChatClient(stub, "m", cache_dir=tmp_path)
    report = build_vocabulary(BuildConfig("cifar10", min_contexts=3, rounds=2), client,
                              resolve_classes("cifar10", ["cat"]))
    assert [r.info.name for r in report.short] == ["cat"]
    assert report.vocabulary.contexts(3) == ["in a desert"]
    assert "short: class 3 'cat': 1 contexts after 2 rounds" in report.summary()
    assert "1 of 1 classes fell short" in report.vocabulary.provenance["notes"]


# -- CLI: show, diff, validate ----------------------------------------------------------------------------------

def test_cli_show_lists_and_prints(capsys):
    assert run_vocab(["show"]) == 0
    assert "cifar100\tcolor" in capsys.readouterr().out
    assert run_vocab(["show", "cifar10", "--class", "cat", "--prompts"]) == 0
    out = capsys.readouterr().out
    assert "[3] cat" in out and "a photo of a cat in a snowy forest" in out and "[5] dog" not in out


def test_cli_diff_reports_changes(tmp_path, capsys):
    doc = _doc(version="1.1.0")
    doc["classes"][3]["contexts"][0] = "on a glacier"          # removed 'in a snowy forest', added 'on a glacier'
    doc["classes"][3]["contexts"][2] = "in the deserts"        # reworded 'in a desert'
    new = tmp_path / "new.json"
    new.write_text(json.dumps(doc))
    assert run_vocab(["diff", "cifar10", str(new)]) == 0
    out = capsys.readouterr().out
    assert "version: '1.0.0' -> '1.1.0'" in out
    assert "  - in a snowy forest" in out and "  + on a glacier" in out
    assert "  ~ in a desert -> in the deserts" in out and "1 classes changed: +1 -1 ~1" in out
    d = diff_vocabularies(load_vocabulary("cifar10"), load_vocabulary("cifar10"))
    assert d.identical and "no differences" in format_diff(d, "a", "b")


def test_cli_validate(tmp_path, capsys):
    assert run_vocab(["validate", "cifar100", "--kind", "color"]) == 0
    doc = _doc()
    doc["classes"] = doc["classes"][:2]
    p = tmp_path / "part.json"
    p.write_text(json.dumps(doc))
    assert run_vocab(["validate", str(p)]) == 1
    err = capsys.readouterr().err.strip()
    assert "class 2 'bird' is missing" in err and len(err.splitlines()) == 1
    assert run_vocab(["validate", str(p), "--partial"]) == 0


def test_vocabulary_is_a_dataclass_with_the_documented_api():
    vocab = load_vocabulary(Path(load_vocabulary("cifar10").source))
    assert isinstance(vocab, Vocabulary)
    assert vocab.class_names[:2] == ["airplane", "automobile"]
    assert {"dataset", "kind", "version", "template", "provenance", "classes"} <= set(vars(vocab))


def test_label_names_follow_each_datasets_classlabel():
    from failmode.vocab.classnames import label_names

    imagenet = label_names("imagenet-1k")
    assert len(imagenet) == 1000 and imagenet[0] == "tench, Tinca tinca"
    assert load_vocabulary("imagenet-1k").class_names[0] == "tench"
    assert label_names("cifar10") == CIFAR10_CLASSES


def test_a_build_with_no_usable_context_says_why_in_the_error(stub, tmp_path):
    from failmode.vocab.build import BuildConfig, build_vocabulary, resolve_classes

    _Stub.answer = "1. on the sea\n2. harbor"  # only what the server called the common contexts
    with pytest.raises(FailmodeError, match=r"no class received any usable context .* every candidate was rejected: ") as e:
        build_vocabulary(BuildConfig("cifar10", min_contexts=3, rounds=1),
                         ChatClient(stub, "m", cache_dir=tmp_path), resolve_classes("cifar10", ["cat"]))
    assert "see -v" not in str(e.value) and "\n" not in str(e.value)


# -- no secrets at rest ----------------------------------------------------------------------------------------

def test_redact_url_drops_userinfo_and_credential_parameters():
    from failmode.vocab.llm import redact_url

    assert redact_url("http://user:KEY@127.0.0.1:8080/v1?api-key=K2&x=1") == "http://127.0.0.1:8080/v1?x=1"
    assert redact_url("https://h/v1?key=a&token=b&access_token=c&sig=d&Api_Key=e&X-Api-Key=f&my_token=g&v=2") == \
        "https://h/v1?v=2"
    assert redact_url("https://h.example/v1/") == "https://h.example/v1/"


def test_vocab_build_stores_no_credential_of_the_endpoint(stub, tmp_path, capsys, caplog):
    """`vocab build --endpoint http://user:KEY@host/v1?api-key=KEY2`: neither key reaches the vocabulary's provenance,
    the LLM cache entries, the logs or the output; cache keys use the redacted URL (a rerun without the credentials
    is served from the cache). Before, provenance held `user:KEY@...` and every cache entry both keys."""
    import logging

    port = stub.split(":")[2].split("/")[0]
    secret = f"http://user:SECRETKEY1@127.0.0.1:{port}/v1?api-key=SECRETKEY2&api_version=3"
    out, cache = tmp_path / "v.json", tmp_path / "cache"
    argv = ["build", "--dataset", "cifar10", "--classes", "cat", "--endpoint", secret, "--model", "m",
            "--min-contexts", "3", "--rounds", "1", "--concurrency", "1", "--cache-dir", str(cache), "--out", str(out)]
    with caplog.at_level(logging.DEBUG):
        assert run_vocab(argv) == 0
    printed = capsys.readouterr()
    stored = [p for p in [out, *cache.rglob("*")] if p.is_file()]
    assert len(stored) >= 3  # the vocabulary and at least two cached answers (common contexts, one round)
    for written in [*(p.read_text() for p in stored), printed.out, printed.err, caplog.text]:
        assert "SECRETKEY" not in written and "user:" not in written
    prov = load_vocabulary(out).provenance["generator"]
    assert f"(127.0.0.1:{port})" in prov
    entry = json.loads(next(cache.rglob("*.json")).read_text())
    assert entry["endpoint"] == f"http://127.0.0.1:{port}/v1?api_version=3" and len(entry["sha256"]) == 64
    sent = len(_Stub.bodies)
    assert run_vocab([*argv[:6], f"http://127.0.0.1:{port}/v1?api_version=3", *argv[7:]]) == 0
    assert len(_Stub.bodies) == sent  # the same cache entries: keyed by the redacted URL
    assert "0 requests" in capsys.readouterr().out


def test_a_damaged_llm_cache_entry_is_asked_again_with_one_warning(stub, tmp_path, caplog):
    request = {"messages": [{"role": "user", "content": "hi"}], "temperature": 0.0, "seed": 1}
    client = ChatClient(stub, "m", cache_dir=tmp_path)
    first = client.complete(request)
    path = client.cache_path(request)
    for damage in (lambda t: t[: len(t) // 2], lambda t: t.replace("desert", "forest")):
        path.write_text(damage(path.read_text()))
        caplog.clear()
        again = ChatClient(stub, "m", cache_dir=tmp_path)
        assert again.complete(request).text == first.text and again.stats.requests == 1
        warnings = [r for r in caplog.records if r.levelname == "WARNING"]
        assert len(warnings) == 1 and "ignoring the cache entry" in warnings[0].getMessage()
    assert ChatClient(stub, "m", cache_dir=tmp_path).complete(request).cached  # rewritten, valid again
