--[[
  The ghostmesh command line, with no Lightroom calls in it (so it can be checked on its own).
  Lua 5.1: Lightroom Classic's interpreter (no goto, no integer division operator).

  The darktable script carries the same functions (it must stay one self-contained file);
  tests/test_plugins_quoting.py checks that the two give the same answers.
]]

local M = {}

M.PRESET_FROM_SETTINGS = ""

--- POSIX sh: single quotes take everything literally; a quote inside is closed, escaped, reopened.
function M.quote_posix(s)
  return "'" .. (string.gsub(s, "'", "'\\''")) .. "'"
end

--- Windows (cmd.exe, then the program's own argument parsing): double quotes, with the
--- backslashes before the closing quote doubled. A double quote cannot appear in a Windows file
--- name and cannot be passed safely through cmd.exe, so it is refused.
function M.quote_windows(s)
  if string.find(s, '"', 1, true) then
    return nil, "a double quote cannot be passed on a Windows command line: " .. s
  end
  local body, slashes = string.match(s, "^(.-)(\\*)$")
  return '"' .. body .. slashes .. slashes .. '"'
end

local function split_words(s)
  local words = {}
  for w in string.gmatch(s or "", "%S+") do
    words[#words + 1] = w
  end
  return words
end

--- The argument list for one file (executable first), from the export settings.
function M.arguments(settings, file)
  local exe = settings.executable
  if exe == nil or not string.find(exe, "%S") then exe = "ghostmesh" end
  local args = { exe, "protect", "--in-place" }
  local preset = settings.preset
  if preset and preset ~= M.PRESET_FROM_SETTINGS then
    args[#args + 1] = "--preset"
    args[#args + 1] = preset
  end
  if settings.targets and string.find(settings.targets, "%S") then
    args[#args + 1] = "--targets"
    args[#args + 1] = (string.gsub(settings.targets, "%s", ""))
  end
  local steps = tonumber(settings.steps)
  if steps and steps > 0 then
    args[#args + 1] = "--steps"
    args[#args + 1] = tostring(math.floor(steps))
  end
  local extra = split_words(settings.extra_args)
  for i = 1, #extra do
    args[#args + 1] = extra[i]
  end
  args[#args + 1] = "--" -- a file name that starts with "-" is still a file
  args[#args + 1] = file
  return args
end

--- One shell command line: the quoted arguments, all output into `log`.
function M.line(args, log, windows)
  local quote = windows and M.quote_windows or M.quote_posix
  local parts = {}
  for i = 1, #args do
    local q, err = quote(args[i])
    if not q then return nil, err end
    parts[i] = q
  end
  local q, err = quote(log)
  if not q then return nil, err end
  local line = table.concat(parts, " ") .. " >" .. q .. " 2>&1"
  if windows then
    -- The SDK's convention for LrTasks.execute on Windows: cmd.exe strips the first and last
    -- quote of a line with several quoted parts, so the whole line is wrapped once more.
    line = '"' .. line .. '"'
  end
  return line
end

--- A wait status on macOS (exit code * 256), the exit code on Windows.
function M.exit_code(status, windows)
  if type(status) ~= "number" then return -1 end
  if not windows and status >= 256 and status % 256 == 0 then
    return math.floor(status / 256)
  end
  return status
end

local function last_line(output)
  local last
  for line in string.gmatch(output or "", "[^\r\n]+") do
    if string.find(line, "%S") then last = line end
  end
  return last
end

--- A weak copy in ghostmesh's output (its last line): "weak" (nothing was replaced: the file is
--- still the unprotected export) or "kept" (--keep-weak replaced it anyway), and the reasons
--- (which target was not reached, which budget was exceeded); nil when it reports none.
function M.weak(output)
  local last = last_line(output)
  if not last then return nil end
  local reasons = string.match(last, ": weak %(kept at your request%): (.*)$")
  if reasons then return "kept", reasons end
  reasons = string.match(last, ": weak: (.*)$")
  if reasons then
    return "weak", (string.gsub(reasons, "%s*%(left unchanged;[^()]*%)%s*$", ""))
  end
  return nil
end

--- Why ghostmesh left the file as it was although it succeeded (e.g. no face for face-only
--- targets: nothing to protect); nil otherwise.
function M.skipped(output)
  local last = last_line(output)
  if not last then return nil end
  return string.match(last, ": skipped: (.*)$")
end

--- The reason to show: ghostmesh's own one-line error when it gave one.
function M.reason(code, output, exe)
  local last = last_line(output)
  if code == 127 or code == 9009 then
    return "the ghostmesh command was not found (" .. exe .. "); set its full path in the "
      .. "Export dialog, section \"Protect with Ghost Mesh\""
  end
  local kind, reasons = M.weak(output)
  if kind == "weak" then
    return "not protected enough (weak): " .. reasons
  end
  if last then
    return (string.gsub(last, "^ghostmesh: ", ""))
  end
  return "ghostmesh stopped with exit status " .. tostring(code)
end

--- <dir>/<stem>.unprotected<.ext>
function M.unprotected_name(path)
  local stem, ext = string.match(path, "^(.*)(%.[^%./\\]+)$")
  if not stem then return path .. ".unprotected" end
  return stem .. ".unprotected" .. ext
end

return M
