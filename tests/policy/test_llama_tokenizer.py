"""openvla-7b's Llama-2 tokenizer rebuilt from the npm package llama-tokenizer-js (policy/llama_tokenizer.py).

scripts/bootstrap.sh builds it into .cache/ before the tests run (CI runs bootstrap first), so a missing build is
a failure that says how to fix it, not a skip.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from policy import llama_tokenizer as lt
from policy.checkpoint import load_tokenizer
from policy.prompt import LLAMA2_PROMPT_END_TOKEN_ID, encode_prompt

REPO_ROOT = Path(__file__).resolve().parents[2]
# The two instructions of the fixture (../shared/fixtures/openvla/README.md, "Token ids").
FIXTURE_INSTRUCTIONS = ("pick up the red block", "open the top drawer and put the bowl inside")
# Texts shaped like OpenVLA prompts and instructions: punctuation, digits, several spaces, tabs, newlines,
# non-ASCII letters in and out of the vocabulary, emoji (byte fallback). None starts with a space (see
# test_transformers_keeps_the_file_ids_for_prompts).
TEXTS = (
    "In: What action should the robot take to pick up the red block?\nOut:",
    "put the 2 blue cubes  into the bowl, then push it 15 cm to the left!",
    "stack\tthe   cups;   don't knock over the vase (fragile)\n\n",
    "place the crème brûlée on the plate — carefully",
    "ставь кубик 在盒子里 箱に入れて 🦙🤖 Ꙋ",
    "{json: [1, 2.5e-3]} #tag @user ~/path_to/file.txt",
)


@pytest.fixture(scope="module")
def tokenizer_dir() -> Path:
    return lt.require_tokenizer_dir()  # FileNotFoundError "... Run scripts/bootstrap.sh ..." when not built


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return load_tokenizer(tokenizer_dir)  # the project's own loader (transformers' AutoTokenizer)


@pytest.fixture(scope="module")
def file_tokenizer(tokenizer_dir):
    """The tokenizer.json pipeline as written (what upstream's LlamaTokenizerFast at 4.40.1 runs)."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))


@pytest.fixture(scope="module")
def npm_tarball() -> Path:
    path = lt.default_npm_tarball()
    if not path.is_file():
        pytest.fail(f"{path} is missing: run scripts/bootstrap.sh (it fetches {lt.NPM_PACKAGE}@{lt.NPM_VERSION})")
    return path


def test_missing_build_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"scripts/bootstrap\.sh"):
        lt.require_tokenizer_dir(tmp_path / "nothing-here")


@pytest.mark.parametrize("index", [0, 1])
def test_reproduces_the_fixture_prompt_ids(tokenizer, fixture_reference, index):
    expected = fixture_reference[f"input_ids_{index}"][0].tolist()
    assert encode_prompt(tokenizer, FIXTURE_INSTRUCTIONS[index]) == expected


def test_vocabulary_and_special_ids(tokenizer):
    assert tokenizer.vocab_size == 32000
    assert len(tokenizer) == 32001
    assert (tokenizer.unk_token, tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (
        "<unk>", "<s>", "</s>", "<PAD>")
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert tokenizer.pad_token_id == tokenizer.convert_tokens_to_ids("<PAD>") == 32000
    assert tokenizer.convert_tokens_to_ids("▁") == LLAMA2_PROMPT_END_TOKEN_ID == 29871
    assert tokenizer.model_max_length == 2048 and tokenizer.padding_side == "right"
    ids = tokenizer.encode("pick up the block")
    assert ids[0] == 1 and 2 not in ids  # BOS added, EOS not


def test_byte_fallback_for_a_character_outside_the_vocabulary(tokenizer, file_tokenizer):
    robot = "🤖"
    assert robot not in tokenizer.get_vocab()
    byte_ids = [lt.BYTE_PIECE_OFFSET + value for value in robot.encode("utf-8")]  # <0xF0> = 243, ...
    ids = tokenizer.encode(f"grab{robot}", add_special_tokens=False)
    assert ids[-4:] == byte_ids
    assert file_tokenizer.encode(f"grab{robot}", add_special_tokens=False).ids == ids
    assert tokenizer.convert_ids_to_tokens(byte_ids) == ["<0xF0>", "<0x9F>", "<0xA4>", "<0x96>"]
    assert "<unk>" not in tokenizer.convert_ids_to_tokens(ids)


@pytest.mark.parametrize("text", TEXTS)
def test_decode_round_trip(tokenizer, text):
    ids = tokenizer.encode(text)
    assert ids[0] == 1
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_merges_are_in_the_string_format_tokenizers_0_19_reads(tokenizer_dir):
    model = json.loads((tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))["model"]
    merges = model["merges"]
    assert len(merges) == lt.MERGE_COUNT == 61249
    assert all(isinstance(merge, str) and merge.count(" ") == 1 for merge in merges)
    assert merges[0] == "▁ t"
    # tokenizers 0.19's BPE reader knows exactly these fields (ignore_merges arrived in 0.19.0).
    assert set(model) == {"type", "dropout", "unk_token", "continuing_subword_prefix", "end_of_word_suffix",
                          "fuse_unk", "byte_fallback", "ignore_merges", "vocab", "merges"}
    assert model["byte_fallback"] is True and model["fuse_unk"] is True
    assert len(model["vocab"]) == 32000


def test_configs_match_openvla_7b(tokenizer_dir):
    config = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "LlamaTokenizer"
    assert config["processor_class"] == "PrismaticProcessor"
    assert config["auto_map"] == {"AutoProcessor": "processing_prismatic.PrismaticProcessor"}
    assert (config["model_max_length"], config["padding_side"], config["legacy"]) == (2048, "right", False)
    assert config["added_tokens_decoder"]["32000"]["content"] == "<PAD>"
    special = json.loads((tokenizer_dir / "special_tokens_map.json").read_text())
    assert {key: value["content"] for key, value in special.items()} == {
        "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<PAD>", "unk_token": "<unk>"}
    assert json.loads((tokenizer_dir / "added_tokens.json").read_text()) == {"<PAD>": 32000}


def _npm_package_encode(npm_tarball: Path, texts: list[str], workdir: Path) -> list[list[int]]:
    """Token ids from the npm package's own JavaScript encoder (BOS and the leading "▁" added, like Llama)."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: scripts/bootstrap.sh installs npm (and node) to fetch the tokenizer")
    with tarfile.open(npm_tarball, "r:gz") as archive:
        archive.extractall(workdir, filter="data")
    script = workdir / "encode.mjs"
    script.write_text(
        'import { readFileSync } from "node:fs";\n'
        'import tokenizer from "./package/llama-tokenizer.js";\n'
        'const texts = JSON.parse(readFileSync(0, "utf8"));\n'
        "process.stdout.write(JSON.stringify(texts.map((text) => tokenizer.encode(text))));\n")
    result = subprocess.run([node, str(script)], input=json.dumps(texts), capture_output=True, text=True,
                            timeout=120, cwd=workdir, check=False)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _generated_texts(count: int, seed: int = 0) -> list[str]:
    """Word salads from the project's docs and strings of mixed characters (whitespace runs, non-ASCII, emoji)."""
    rng = random.Random(seed)
    words = (REPO_ROOT / "docs" / "architecture.md").read_text(encoding="utf-8").split()
    characters = "abcdefghijklmnopqrstuvwxyz ABCXYZ 0123456789   \n\t.,;:!?-_'\"()[]{}#@/éüßñçø漢字かな한국어🙂🦙Ꙋ"
    texts = []
    for index in range(count):
        if index % 2:
            texts.append(" ".join(rng.choice(words) for _ in range(rng.randint(1, 40))))
        else:
            texts.append("".join(rng.choice(characters) for _ in range(rng.randint(1, 60))))
    return texts


def test_file_matches_the_npm_package_encoder(npm_tarball, file_tokenizer, tmp_path):
    # Includes leading spaces, runs of spaces and lone newlines: there the SentencePiece rules are subtle.
    texts = [*TEXTS, " grabbed", "           grabbed", " \n", "\n", "ax\n####\nboo", "a  b   c    d", "镇", "x" * 300,
             *_generated_texts(600)]
    expected = _npm_package_encode(npm_tarball, texts, tmp_path)
    mismatches = [text for text, ids in zip(texts, expected, strict=True) if file_tokenizer.encode(text).ids != ids]
    assert not mismatches, f"{len(mismatches)} of {len(texts)} texts differ, e.g. {mismatches[0]!r}"


def test_transformers_keeps_the_file_ids_for_prompts(tokenizer, file_tokenizer):
    # transformers 5's LlamaTokenizer rebuilds the pre-tokenisation (Metaspace, prepend_scheme "first") instead
    # of the file's Prepend/Replace normaliser; both agree on every text that does not start with a space, which
    # OpenVLA prompts never do ("In: ..."). A text that starts with a space loses that space there.
    for text in TEXTS:
        assert tokenizer.encode(text) == file_tokenizer.encode(text).ids


def test_build_command_writes_the_same_files(npm_tarball, tokenizer_dir, tmp_path):
    from fanvla.cli import main

    out = tmp_path / "tokenizer"
    assert main(["policy", "build-tokenizer", "--npm-tarball", str(npm_tarball), "--out", str(out)]) == 0
    for name in lt.TOKENIZER_FILES:
        assert (out / name).read_bytes() == (tokenizer_dir / name).read_bytes(), name
    assert sorted(path.name for path in out.iterdir()) == sorted(lt.TOKENIZER_FILES)
    # A second build into the same directory needs --overwrite.
    assert main(["policy", "build-tokenizer", "--npm-tarball", str(npm_tarball), "--out", str(out)]) == 2
    assert main(["policy", "build-tokenizer", "--npm-tarball", str(npm_tarball), "--out", str(out),
                 "--overwrite"]) == 0


def test_build_refuses_other_tarballs(npm_tarball, tmp_path, capsys):
    from fanvla.cli import main

    not_gzip = tmp_path / "junk.tgz"
    not_gzip.write_bytes(b"not a tarball")
    assert main(["policy", "build-tokenizer", "--npm-tarball", str(not_gzip), "--out", str(tmp_path / "a")]) == 2
    assert "sha256" in capsys.readouterr().err
    with pytest.raises(lt.TokenizerBuildError, match="not a readable"):
        lt.read_npm_tarball(not_gzip, verify_checksum=False)
    with pytest.raises(FileNotFoundError, match="npm pack"):
        lt.read_npm_tarball(tmp_path / "absent.tgz")


def test_vocabulary_check_names_the_problem(npm_tarball):
    vocabulary = lt.read_npm_tarball(npm_tarball)
    broken = lt.LlamaVocabulary(pieces=[*vocabulary.pieces[:-1], "▁"], merges=vocabulary.merges[:-1])
    with pytest.raises(lt.TokenizerBuildError, match=r"duplicate pieces.*61248 merges"):
        lt.check_vocabulary(broken)


def test_copy_tokenizer_files_is_byte_for_byte(tokenizer_dir, tmp_path):
    from policy.interop import copy_tokenizer_files

    (tmp_path / "model").mkdir()
    copied = copy_tokenizer_files(tokenizer_dir, tmp_path / "model")
    assert sorted(copied) == sorted(lt.TOKENIZER_FILES)  # the built config already has upstream's processor entries
    assert all((tmp_path / "model" / name).read_bytes() == (tokenizer_dir / name).read_bytes() for name in copied)


def test_bootstrap_pins_the_same_package_and_checksum():
    script = (REPO_ROOT / "scripts" / "bootstrap.sh").read_text()
    assert f"TOKENIZER_PACKAGE={lt.NPM_PACKAGE}@{lt.NPM_VERSION}" in script
    assert f"TOKENIZER_SHA256={lt.NPM_TARBALL_SHA256}" in script
    assert str(lt.default_tokenizer_dir().relative_to(REPO_ROOT)) in script
