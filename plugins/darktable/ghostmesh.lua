--[[
  Ghost Mesh for darktable: every exported image is replaced by its protected version.

  Ghost Mesh adds a small, bounded perturbation to a photo so that face-recognition and image
  encoders no longer match it, while it looks the same to people. This script runs
  `ghostmesh protect --in-place FILE` on each image darktable exports, so the file that lands in
  the export folder (or is uploaded, or attached to a mail) is the protected one.

  INSTALL
    * copy this file to ~/.config/darktable/lua/ (Windows: %LOCALAPPDATA%\darktable\lua\)
    * add the line   require "ghostmesh"   to ~/.config/darktable/luarc
      (or add the folder with the script manager and start "ghostmesh" there)
    * restart darktable; settings are in preferences > lua options

  WHY AN EVENT, NOT A STORAGE
    It hooks "intermediate-export-image", which darktable raises for every export after the image
    is written in its format and before the storage takes it. So it works with every target
    storage (file on disk, e-mail, Piwigo, ...) and the user keeps choosing folders, names and
    conflict handling in darktable's own export module. A separate storage would have offered
    only "file on disk" and duplicated its settings.

  FAILURE IS CLOSED
    When protection fails, darktable shows a message naming the image and the reason, and the
    unprotected file is renamed to <name>.unprotected.<ext>, so nothing unprotected is left under
    the export name (an upload storage then finds no file and reports the export as failed).
    A weak result is a failure too: ghostmesh measured its copy and it did not reach a target's
    goal within the preset's budget, so it left the export as it was (unprotected); the message
    says "not protected enough (weak)" and which target was not reached. Only with --keep-weak in
    the extra arguments is the weak copy exported, with a message saying so.
    `ghostmesh protect --in-place` itself replaces the file atomically: the export is never
    half-written.

  Self-contained: needs nothing from the lua-scripts library. Lua 5.4 (darktable 4.x and later).
]]

local dt = require "darktable"

local MODULE = "ghostmesh"
local EVENT = "intermediate-export-image"
local MIN_API_MAJOR = 6 -- named events (register_event with a name) arrived with API 6

local script_data = {}
script_data.metadata = {
  name = "Ghost Mesh",
  purpose = "protect exported images from AI identity matching (replaces each export with its protected version)",
  author = "Ghost Mesh contributors",
}
script_data.destroy = nil -- set below: unregisters the export hook
script_data.destroy_method = nil -- not a lib: nothing to hide, the hook is removed
script_data.restart = nil
script_data.show = nil

local PRESETS = { "from Ghost Mesh settings", "stealth", "panic" }

-- - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -
-- preferences (preferences > lua options)
-- - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -

local function register_preferences()
  local p = dt.preferences
  p.register(MODULE, "enabled", "bool", "Ghost Mesh: protect every export",
    "replace each exported image with its Ghost Mesh protected version", true)
  p.register(MODULE, "executable", "file", "Ghost Mesh: ghostmesh command",
    "the ghostmesh program; leave empty to use the one on your PATH (on macOS and Windows, "
    .. "where darktable may not see your PATH, choose the file: `which ghostmesh` / `where ghostmesh` shows it)", "")
  p.register(MODULE, "preset", "enum", "Ghost Mesh: preset",
    "stealth: subtle and strong against re-identification; panic: strongest, more visible", PRESETS[1],
    PRESETS[1], PRESETS[2], PRESETS[3])
  p.register(MODULE, "targets", "string", "Ghost Mesh: targets",
    "encoders to protect against, comma separated (e.g. siglip,face); empty: Ghost Mesh settings", "")
  p.register(MODULE, "steps", "integer", "Ghost Mesh: optimization steps",
    "0: the preset's number of steps; fewer is faster and weaker", 0, 0, 10000)
  p.register(MODULE, "extra_args", "string", "Ghost Mesh: extra arguments",
    "more ghostmesh protect options, separated by spaces (e.g. --device cpu)", "")
  p.register(MODULE, "keep_unprotected", "bool", "Ghost Mesh: keep an unprotected copy",
    "also keep the unprotected export as <name>.unprotected.<ext> beside it", false)
end

local function settings()
  local p = dt.preferences
  return {
    enabled = p.read(MODULE, "enabled", "bool"),
    executable = p.read(MODULE, "executable", "file"),
    preset = p.read(MODULE, "preset", "enum"),
    targets = p.read(MODULE, "targets", "string"),
    steps = p.read(MODULE, "steps", "integer"),
    extra_args = p.read(MODULE, "extra_args", "string"),
    keep_unprotected = p.read(MODULE, "keep_unprotected", "bool"),
  }
end

-- - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -
-- command line (kept free of darktable calls so it can be checked on its own)
-- - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -

local cmd = {}

--- POSIX sh: single quotes take everything literally; a quote inside is closed, escaped, reopened.
function cmd.quote_posix(s)
  return "'" .. (string.gsub(s, "'", "'\\''")) .. "'"
end

--- Windows (cmd.exe, then the program's own argument parsing): double quotes, with the
--- backslashes before the closing quote doubled. A double quote cannot appear in a Windows file
--- name and cannot be passed safely through cmd.exe, so it is refused.
function cmd.quote_windows(s)
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

--- The argument list for one file (executable first), from the settings.
function cmd.arguments(s, file)
  local exe = s.executable
  if exe == nil or exe == "" then exe = "ghostmesh" end
  local args = { exe, "protect", "--in-place" }
  if s.preset and s.preset ~= "" and s.preset ~= PRESETS[1] then
    args[#args + 1] = "--preset"
    args[#args + 1] = s.preset
  end
  if s.targets and string.find(s.targets, "%S") then
    args[#args + 1] = "--targets"
    args[#args + 1] = (string.gsub(s.targets, "%s", ""))
  end
  if s.steps and s.steps > 0 then
    args[#args + 1] = "--steps"
    args[#args + 1] = tostring(math.floor(s.steps))
  end
  for _, w in ipairs(split_words(s.extra_args)) do
    args[#args + 1] = w
  end
  args[#args + 1] = "--" -- a file name that starts with "-" is still a file
  args[#args + 1] = file
  return args
end

--- One shell command line: the quoted arguments, all output into `log`.
function cmd.line(args, log, windows)
  local quote = windows and cmd.quote_windows or cmd.quote_posix
  local parts = {}
  for i, a in ipairs(args) do
    local q, err = quote(a)
    if not q then return nil, err end
    parts[i] = q
  end
  local q, err = quote(log)
  if not q then return nil, err end
  local line = table.concat(parts, " ") .. " >" .. q .. " 2>&1"
  if windows then
    -- cmd.exe /c strips the first and last quote of a line with several quoted parts: wrap it
    -- once more so the program's own quotes survive.
    line = '"' .. line .. '"'
  end
  return line
end

--- system() gives a wait status on POSIX (exit code * 256) and the exit code on Windows.
function cmd.exit_code(status, windows)
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
function cmd.weak(output)
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
function cmd.skipped(output)
  local last = last_line(output)
  if not last then return nil end
  return string.match(last, ": skipped: (.*)$")
end

--- The reason to show: ghostmesh's own one-line error when it gave one.
function cmd.reason(code, output, exe)
  local last = last_line(output)
  if code == 127 or code == 9009 then
    return "the ghostmesh command was not found (" .. exe .. "); set its full path in "
      .. "preferences > lua options > Ghost Mesh: ghostmesh command"
  end
  local kind, reasons = cmd.weak(output)
  if kind == "weak" then
    return "not protected enough (weak): " .. reasons
  end
  if last then
    return (string.gsub(last, "^ghostmesh: ", ""))
  end
  return "ghostmesh stopped with exit status " .. tostring(code)
end

--- <dir>/<stem>.unprotected<.ext>
function cmd.unprotected_name(path)
  local stem, ext = string.match(path, "^(.*)(%.[^%./\\]+)$")
  if not stem then return path .. ".unprotected" end
  return stem .. ".unprotected" .. ext
end

-- - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -
-- files
-- - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -

local function read_all(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local data = f:read("*a")
  f:close()
  return data
end

local function copy_file(src, dst)
  local data = read_all(src)
  if not data then return false, "cannot read " .. src end
  local tmp = dst .. ".part"
  local f, err = io.open(tmp, "wb")
  if not f then return false, "cannot write " .. tmp .. ": " .. tostring(err) end
  local ok, werr = f:write(data)
  f:close()
  if not ok then
    os.remove(tmp)
    return false, "cannot write " .. tmp .. ": " .. tostring(werr)
  end
  os.remove(dst) -- Windows cannot rename over an existing file
  local renamed, rerr = os.rename(tmp, dst)
  if not renamed then
    os.remove(tmp)
    return false, "cannot create " .. dst .. ": " .. tostring(rerr)
  end
  return true
end

local log_counter = 0
local function log_path(windows)
  log_counter = log_counter + 1
  local dir = dt.configuration.tmp_dir or "."
  local sep = windows and "\\" or "/"
  return string.format("%s%sghostmesh-%d-%d.log", dir, sep, os.time(), log_counter)
end

-- - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -
-- the export hook
-- - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -

--- Protect `file` in place. Returns true and a note (nil, or what to tell the user: a weak copy
--- kept at their request, a photo left as it was), or false and the reason.
local function protect(file, s)
  local windows = dt.configuration.running_os == "windows"
  local args = cmd.arguments(s, file)
  local log = log_path(windows)
  local line, err = cmd.line(args, log, windows)
  if not line then return false, err end
  local status = dt.control.execute(line)
  local code = cmd.exit_code(status, windows)
  local output = read_all(log)
  os.remove(log)
  if code == 0 then
    local why = cmd.skipped(output)
    if why then return true, "left as it is: " .. why end
    return true
  end
  local kind, reasons = cmd.weak(output)
  if kind == "kept" then
    return true, "only weakly protected (kept at your request, --keep-weak): " .. reasons
  end
  return false, cmd.reason(code, output, args[1])
end

local function image_label(image, file)
  if type(image) == "table" or type(image) == "userdata" then
    local ok, name = pcall(function() return image.filename end)
    if ok and name then return name end
  end
  return file
end

local function on_export(event, image, filename, format, storage)
  local s = settings()
  if not s.enabled then return end
  local name = image_label(image, filename)
  local copy
  if s.keep_unprotected then
    copy = cmd.unprotected_name(filename)
    local ok, err = copy_file(filename, copy)
    if not ok then
      copy = nil
      dt.print_error("Ghost Mesh: could not keep an unprotected copy of " .. name .. ": " .. err)
    end
  end
  local ok, reason = protect(filename, s)
  if ok then
    if reason then
      dt.print("Ghost Mesh: " .. name .. " " .. reason)
    else
      dt.print("Ghost Mesh protected " .. name)
    end
    return
  end
  -- Fail closed: nothing unprotected stays under the export name.
  local aside = cmd.unprotected_name(filename)
  if copy then
    os.remove(filename)
  else
    os.remove(aside)
    if not os.rename(filename, aside) then
      os.remove(filename)
      aside = nil
    end
  end
  local msg = "Ghost Mesh could not protect " .. name .. ": " .. reason
  if aside then
    msg = msg .. " (the unprotected export is " .. aside .. ")"
  else
    msg = msg .. " (the unprotected export was removed)"
  end
  dt.print(msg)
  dt.print_error(msg)
end

local function destroy()
  dt.destroy_event(MODULE, EVENT)
end

-- - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -
-- start
-- - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -

local api_major = tonumber(dt.configuration.api_version_major) or 0
if api_major < MIN_API_MAJOR then
  dt.print_error("Ghost Mesh needs darktable's Lua API " .. MIN_API_MAJOR .. ".0 or newer (this darktable has "
    .. tostring(dt.configuration.api_version_string or api_major) .. "); export protection is off")
  return script_data
end

register_preferences()
dt.register_event(MODULE, EVENT, on_export)
script_data.destroy = destroy
script_data.command = cmd -- for tests and for other scripts that want the same quoting

return script_data
