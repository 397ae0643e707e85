<#
.SYNOPSIS
    One-time Windows setup for profiles/directml: a Python venv whose `python -m facesets embed`
    runs the face models on the GPU through ONNX Runtime's DirectML provider.

.DESCRIPTION
    Run it in PowerShell on the Windows host (not inside WSL), from the WSL checkout, e.g.

        powershell -ExecutionPolicy Bypass -File \\wsl.localhost\Debian\home\me\face-sets\scripts\windows\setup_embed_venv.ps1

    It is idempotent (rerun it after requirements.lock changes):
      1. creates the venv (default C:\face_embed_venv) with Python 3.11+ (the `py` launcher if present);
      2. installs the packages the embed imports, at the versions pinned in requirements.lock;
      3. installs onnxruntime-directml and removes the CPU-only onnxruntime (both provide the
         `onnxruntime` module; the DirectML one also runs on the CPU);
      4. installs this checkout's face-sets package editable and without dependencies
         (`pip install --no-deps -e`), so the Windows side always runs the same code as WSL and
         finds config/schemas; Snakemake and the rest stay on the WSL side;
      5. checks that DmlExecutionProvider is available and prints the line for config.yaml.

.PARAMETER Venv
    Where the venv goes (default C:\face_embed_venv). Its python.exe, as a WSL path, is the config
    key embed_host.windows_python (default /mnt/c/face_embed_venv/Scripts/python.exe).

.PARAMETER Repo
    The face-sets checkout (default: two folders above this script).

.PARAMETER PythonVersion
    Passed to the `py` launcher (default 3.11).

.PARAMETER OnnxRuntimeDirectML
    The pip requirement for onnxruntime-directml (default "onnxruntime-directml>=1.17"; pin a version
    here to reproduce a setup exactly).
#>
param(
    [string]$Venv = "C:\face_embed_venv",
    [string]$Repo = (Resolve-Path (Join-Path $PSScriptRoot "..\..")).Path,
    [string]$PythonVersion = "3.11",
    [string]$OnnxRuntimeDirectML = "onnxruntime-directml>=1.17"
)
$ErrorActionPreference = "Stop"

# The distributions `facesets embed` imports (opencv backend); versions come from requirements.lock.
$EmbedPackages = @("numpy", "pandas", "pyarrow", "pillow", "pillow_heif", "opencv-python", "onnx",
                   "jsonschema", "PyYAML", "tqdm", "requests", "piexif")

function Invoke-Checked([string]$Exe, [string[]]$Arguments) {
    Write-Host "> $Exe $($Arguments -join ' ')"
    & $Exe @Arguments
    if ($LASTEXITCODE -ne 0) { throw "failed (exit code $LASTEXITCODE): $Exe $($Arguments -join ' ')" }
}

$lockFile = Join-Path $Repo "requirements.lock"
if (-not (Test-Path $lockFile)) { throw "$lockFile not found: pass -Repo <the face-sets checkout>" }

$python = Join-Path $Venv "Scripts\python.exe"
if (-not (Test-Path $python)) {
    if (Get-Command py -ErrorAction SilentlyContinue) {
        Invoke-Checked "py" @("-$PythonVersion", "-m", "venv", $Venv)
    } else {
        Invoke-Checked "python" @("-m", "venv", $Venv)
    }
}
Invoke-Checked $python @("-c", "import sys; assert sys.version_info >= (3, 11), 'face-sets needs Python >= 3.11, found ' + sys.version")
Invoke-Checked $python @("-m", "pip", "install", "--disable-pip-version-check", "--upgrade", "pip")

$pins = @(Get-Content $lockFile | Where-Object { $_ -match '^([A-Za-z0-9_.\-]+)==' -and ($EmbedPackages -contains $Matches[1]) })
$missing = @($EmbedPackages | Where-Object { $name = $_; -not ($pins | Where-Object { $_ -like "$name==*" }) })
if ($missing.Count -gt 0) { throw "not pinned in ${lockFile}: $($missing -join ', ')" }
Invoke-Checked $python (@("-m", "pip", "install", "--disable-pip-version-check") + $pins)

# Both wheels write the `onnxruntime` package: remove the CPU one first, then (re)install the
# DirectML one without touching the pinned packages, then add whatever it still needs.
& $python -m pip show onnxruntime *> $null
if ($LASTEXITCODE -eq 0) { Invoke-Checked $python @("-m", "pip", "uninstall", "-y", "onnxruntime") }
Invoke-Checked $python @("-m", "pip", "install", "--disable-pip-version-check", "--force-reinstall", "--no-deps", $OnnxRuntimeDirectML)
Invoke-Checked $python @("-m", "pip", "install", "--disable-pip-version-check", $OnnxRuntimeDirectML)
Invoke-Checked $python @("-m", "pip", "install", "--disable-pip-version-check", "--no-deps", "-e", $Repo)

$providers = & $python -c "import onnxruntime as ort; print(','.join(ort.get_available_providers()))"
if ($LASTEXITCODE -ne 0 -or $providers -notmatch "DmlExecutionProvider") {
    throw "DmlExecutionProvider is not available in $Venv (providers: $providers)"
}
Invoke-Checked $python @("-m", "facesets", "embed", "--help") | Out-Null

$drive = $python.Substring(0, 1).ToLower()
$wslPython = "/mnt/$drive/" + $python.Substring(3).Replace("\", "/")
Write-Host ""
Write-Host "OK: $Venv runs facesets with providers $providers"
Write-Host "In WSL, run:  snakemake --profile directml"
if ($wslPython -ne "/mnt/c/face_embed_venv/Scripts/python.exe") {
    Write-Host "and put this in your config.yaml:"
    Write-Host "  embed_host: {windows_python: $wslPython}"
}
