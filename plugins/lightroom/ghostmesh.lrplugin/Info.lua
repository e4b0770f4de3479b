--[[
  Ghost Mesh for Lightroom Classic: an export post-process action that replaces each exported
  photo with its Ghost Mesh protected version (same name, same folder, metadata kept).
  Add it in File > Plug-in Manager, then in the Export dialog choose
  "Post-Process Actions > Ghost Mesh > Protect with Ghost Mesh" and click Insert.
]]
return {
  LrSdkVersion = 10.0,
  LrSdkMinimumVersion = 6.0, -- export filters with renditions() and waitForRender()
  LrToolkitIdentifier = "org.ghostmesh.lightroom",
  LrPluginName = "Ghost Mesh",
  LrExportFilterProvider = {
    {
      title = "Protect with Ghost Mesh",
      file = "GhostMeshFilter.lua",
      id = "org.ghostmesh.protect",
    },
  },
  VERSION = { major = 0, minor = 1, revision = 0, display = "0.1.0" },
}
