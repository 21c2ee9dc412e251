#!/usr/bin/env bash
# The `rejuv diagnose` step of the GitHub Action (action.yml). It also runs on its own, with
# rejuv on PATH:
#
#   INPUT_BASE=./base INPUT_SFT=./sft INPUT_FAIL_ON='verdict.label==rigid' \
#       INPUT_MARKDOWN=report.md bash ci/action/diagnose.sh
#
# Every input arrives as an environment variable (action.yml maps inputs.x to INPUT_X), so a
# value only ever becomes one argument of rejuv, never shell code. Multi-line inputs (fail-on,
# args) give one argument per non-blank line, ends trimmed. The markdown report goes to
# $GITHUB_STEP_SUMMARY and `exit-code` and `verdict` to $GITHUB_OUTPUT when those are set.
# Exits with rejuv's exit code: 0 ok, 1 error, 2 usage error, 3 a --fail-on gate tripped.
set -euo pipefail

fail() { # one line: what went wrong and what to do; 2 like rejuv's usage errors
    echo "rejuv action: error: $1" >&2
    exit 2
}

trim() {
    local text=$1
    text=${text#"${text%%[![:space:]]*}"}
    printf '%s' "${text%"${text##*[![:space:]]}"}"
}

# Appends to COMMAND each non-blank line of $1, trimmed, preceded by the flag $2 when given.
add_lines() {
    local line
    while IFS= read -r line || [[ -n $line ]]; do
        line=$(trim "$line")
        [[ -z $line ]] && continue
        if [[ -n $2 ]]; then COMMAND+=("$2" "$line"); else COMMAND+=("$line"); fi
    done <<<"$1"
}

# Each report's flag and the input variable holding its path (empty: that report is left out).
REPORTS=(--json INPUT_JSON --html INPUT_HTML --markdown INPUT_MARKDOWN --junit INPUT_JUNIT)

build_command() {
    local fix="set it under with: (a folder or Hub id)"
    [[ -n ${INPUT_BASE:-} ]] || fail "input 'base' is empty; $fix"
    [[ -n ${INPUT_SFT:-} ]] || fail "input 'sft' is empty; $fix"
    COMMAND=(rejuv diagnose)
    [[ -n ${INPUT_CANDIDATE:-} ]] && COMMAND+=(--candidate "$INPUT_CANDIDATE")
    [[ -n ${INPUT_CALIB:-} ]] && COMMAND+=(--calib "$INPUT_CALIB")
    add_lines "${INPUT_FAIL_ON:-}" --fail-on
    add_lines "${INPUT_ARGS:-}" ""
    local i path
    for ((i = 0; i < ${#REPORTS[@]}; i += 2)); do
        path=${!REPORTS[i + 1]:-}
        [[ -z $path ]] && continue
        # rejuv wants the folder to exist; a report left from an earlier run must not pass for
        # this run's (in the summary, the outputs or the artifact).
        mkdir -p -- "$(dirname -- "$path")"
        rm -f -- "$path"
        COMMAND+=("${REPORTS[i]}" "$path")
    done
    # After `--` a model is never read as an option, whatever its name starts with.
    COMMAND+=(-- "$INPUT_BASE" "$INPUT_SFT")
}

write_summary() {
    [[ -n ${GITHUB_STEP_SUMMARY:-} ]] || return 0
    if [[ -n ${INPUT_MARKDOWN:-} && -s $INPUT_MARKDOWN ]]; then
        cat -- "$INPUT_MARKDOWN" >>"$GITHUB_STEP_SUMMARY"
    else
        printf '**rejuv diagnose** exited with code %s and wrote no markdown report: %s\n' \
            "$1" "see the step's log" >>"$GITHUB_STEP_SUMMARY"
    fi
}

write_outputs() {
    [[ -n ${GITHUB_OUTPUT:-} ]] || return 0
    local verdict=""
    local label='import json, sys; print(json.load(open(sys.argv[1]))["verdict"]["label"])'
    if [[ -n ${INPUT_JSON:-} && -s $INPUT_JSON ]]; then
        verdict=$(python3 -c "$label" "$INPUT_JSON")
    fi
    printf 'exit-code=%s\nverdict=%s\n' "$1" "$verdict" >>"$GITHUB_OUTPUT"
}

# An annotation on the run's page, so a failed gate is seen without opening the log.
annotate() {
    [[ ${GITHUB_ACTIONS:-} == true && $1 != 0 ]] || return 0
    local why
    case $1 in
    1) why="an error (its one-line message is in the step's log)" ;;
    2) why="a usage error (its one-line message is in the step's log)" ;;
    3) why="a --fail-on gate tripped (see the job summary)" ;;
    *) why="exit code $1" ;;
    esac
    echo "::error title=rejuv diagnose::rejuv diagnose failed: $why"
}

main() {
    build_command
    local code=0
    "${COMMAND[@]}" || code=$?
    write_summary "$code"
    write_outputs "$code"
    annotate "$code"
    exit "$code"
}

main
