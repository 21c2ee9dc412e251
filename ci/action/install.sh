#!/usr/bin/env bash
# The install step of the GitHub Action (action.yml): a virtual environment in $RUNNER_TEMP
# holding torch (TORCH_REQUIREMENT from TORCH_INDEX_URL: the CPU wheel unless the workflow
# says otherwise) and rejuv built from this checkout of the action, i.e. the git ref the
# workflow names in `uses: ORG/rejuv@REF`, never a release from a package index. Its bin/ goes
# on PATH for the steps after it (the diagnose step, and the workflow's own).
set -euo pipefail

venv="${RUNNER_TEMP:?not in a GitHub Actions job}/rejuv-venv"
# A venv rather than the interpreter's site-packages: the runner's own python3 (python-version
# left empty) is "externally managed" on Debian and Ubuntu and refuses pip installs.
python3 -m venv "$venv"
pip=("$venv/bin/python" -m pip install --disable-pip-version-check)
if [[ -n ${TORCH_REQUIREMENT:-} ]]; then
    # torch first and from its own index: rejuv's requirement (torch>=2.4) is then already met,
    # so pip does not pull the multi-GB CUDA build from the package index.
    "${pip[@]}" --index-url "${TORCH_INDEX_URL:?the torch-index-url input is empty}" \
        "$TORCH_REQUIREMENT"
fi
"${pip[@]}" "${GITHUB_ACTION_PATH:?not in a composite action step}"
echo "$venv/bin" >>"${GITHUB_PATH:?not in a GitHub Actions job}"
"$venv/bin/rejuv" --version
