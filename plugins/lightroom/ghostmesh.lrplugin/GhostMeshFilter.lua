--[[
  Export filter ("post-process action"): for each rendition, wait for Lightroom's render, run
  `ghostmesh protect --in-place FILE` on the rendered file, and let the export carry on with the
  protected file under the same name, so the destination and naming chosen in the Export dialog
  are unchanged.

  Failure is closed: the unprotected render is deleted and the rendition is reported failed with
  renditionIsDone(false, message); Lightroom lists those messages when the export ends, and no
  unprotected photo reaches the destination. A weak result (ghostmesh's copy did not reach a
  target's goal within the preset's budget, so it left the render unprotected) is such a failure,
  reported as "not protected enough (weak)" with the target not reached; with --keep-weak in the
  extra arguments the weak copy is exported instead, as the user asked.

  Lua 5.1 (Lightroom Classic).
]]

local LrDialogs = import "LrDialogs"
local LrFileUtils = import "LrFileUtils"
local LrPathUtils = import "LrPathUtils"
local LrTasks = import "LrTasks"
local LrView = import "LrView"

local Command = require "GhostMeshCommand"

local provider = {}

provider.exportPresetFields = {
  { key = "ghostmesh_executable", default = "" },
  { key = "ghostmesh_preset", default = Command.PRESET_FROM_SETTINGS },
  { key = "ghostmesh_targets", default = "" },
  { key = "ghostmesh_extra_args", default = "" },
}

local function settings_from(propertyTable)
  return {
    executable = propertyTable.ghostmesh_executable,
    preset = propertyTable.ghostmesh_preset,
    targets = propertyTable.ghostmesh_targets,
    extra_args = propertyTable.ghostmesh_extra_args,
  }
end

function provider.sectionForFilterInDialog(f, propertyTable)
  local bind = LrView.bind
  local labelWidth = LrView.share "ghostmesh_label_width"
  return {
    title = "Protect with Ghost Mesh",
    synopsis = bind { key = "ghostmesh_preset", transform = function(value)
      if value == nil or value == Command.PRESET_FROM_SETTINGS then return "preset from Ghost Mesh settings" end
      return "preset: " .. value
    end },
    f:row {
      f:static_text { title = "ghostmesh command:", alignment = "right", width = labelWidth },
      f:edit_field {
        value = bind "ghostmesh_executable",
        width_in_chars = 36,
        tooltip = "Full path of the ghostmesh program (`which ghostmesh` on macOS, `where ghostmesh` on Windows). "
          .. "Empty: use the one on the PATH, which Lightroom started from the Dock or Start menu often does not see.",
      },
      f:push_button {
        title = "Choose...",
        action = function()
          local chosen = LrDialogs.runOpenPanel {
            title = "Choose the ghostmesh program",
            canChooseFiles = true,
            canChooseDirectories = false,
            allowsMultipleSelection = false,
          }
          if chosen and chosen[1] then propertyTable.ghostmesh_executable = chosen[1] end
        end,
      },
    },
    f:row {
      f:static_text { title = "Preset:", alignment = "right", width = labelWidth },
      f:popup_menu {
        value = bind "ghostmesh_preset",
        items = {
          { title = "From Ghost Mesh settings", value = Command.PRESET_FROM_SETTINGS },
          { title = "Stealth (subtle)", value = "stealth" },
          { title = "Panic (strongest, more visible)", value = "panic" },
        },
      },
    },
    f:row {
      f:static_text { title = "Targets:", alignment = "right", width = labelWidth },
      f:edit_field {
        value = bind "ghostmesh_targets",
        width_in_chars = 24,
        tooltip = "Encoders to protect against, comma separated (e.g. siglip,face). Empty: Ghost Mesh settings.",
      },
    },
    f:row {
      f:static_text { title = "Extra arguments:", alignment = "right", width = labelWidth },
      f:edit_field {
        value = bind "ghostmesh_extra_args",
        width_in_chars = 24,
        tooltip = "More `ghostmesh protect` options separated by spaces, e.g. --steps 200 --device cpu",
      },
    },
    f:static_text {
      title = "Each exported photo is replaced by its protected version, with the same name and metadata. "
        .. "If protection fails, or is too weak (a target not reached within the preset's budget), the photo "
        .. "is not exported and Lightroom lists the reason.",
      fill_horizontal = 1,
      height_in_lines = 3,
    },
  }
end

--- Protect `path` in place; true, or false and the reason.
local function protect(path, settings)
  local args = Command.arguments(settings, path)
  local temp = LrPathUtils.getStandardFilePath "temp"
  local log = LrFileUtils.chooseUniqueFileName(LrPathUtils.child(temp, "ghostmesh-export.log"))
  local line, err = Command.line(args, log, WIN_ENV)
  if not line then return false, err end
  local status = LrTasks.execute(line)
  local code = Command.exit_code(status, WIN_ENV)
  local output = ""
  if LrFileUtils.exists(log) then
    output = LrFileUtils.readFile(log) or ""
    LrFileUtils.delete(log)
  end
  if code == 0 then return true end
  if Command.weak(output) == "kept" then return true end -- --keep-weak: the user asked for the weak copy
  return false, Command.reason(code, output, args[1])
end

local function is_video(rendition)
  local photo = rendition.photo
  if not photo then return false end
  local ok, video = LrTasks.pcall(function() return photo:getRawMetadata "isVideo" end)
  return ok and video == true
end

function provider.postProcessRenderedPhotos(functionContext, filterContext)
  local settings = settings_from(filterContext.propertyTable)
  for sourceRendition, renditionToSatisfy in filterContext:renditions { stopIfCanceled = true } do
    local success, pathOrMessage = sourceRendition:waitForRender()
    if not success then
      renditionToSatisfy:renditionIsDone(false, pathOrMessage or "Lightroom could not render this photo")
    elseif not sourceRendition.wasSkipped and not is_video(sourceRendition) then
      local ok, reason = protect(pathOrMessage, settings)
      if not ok then
        if LrFileUtils.exists(pathOrMessage) then LrFileUtils.delete(pathOrMessage) end
        reason = string.gsub(reason, "[%.%s]+$", "")
        renditionToSatisfy:renditionIsDone(false, "Ghost Mesh could not protect "
          .. LrPathUtils.leafName(pathOrMessage) .. ": " .. reason .. ". The photo was not exported.")
      end
    end
  end
end

return provider
