-- Argo CD health check for kube-xdp's XdpProgram (kubexdp.io/v1alpha1).
-- Install as resource.customizations.health.kubexdp.io_XdpProgram in argocd-cm
-- (deploy/argocd/README.md). Reads the same fields as kstatus (Flux, kpt), in the
-- same order, so Argo CD and Flux agree on every state:
--   deletionTimestamp                  -> Progressing (being deleted; see below)
--   no status / observedGeneration     -> Progressing (the operator has not seen
--     missing or != metadata.generation    this generation yet)
--   Reconciling=True                   -> Progressing
--   Stalled=True                       -> Degraded (a permanent failure: compile error,
--                                         verifier, invalid spec...; the user must act)
--   Ready=True                         -> Healthy
--   anything else                      -> Progressing
-- Conditions and reasons: docs/api.md.
-- Objects being deleted: Argo CD releases whose health code returns Progressing /
-- "Pending deletion" for any object with a deletionTimestamp never run this script for
-- them (gitops-engine's GetResourceHealth checks that before any custom check). Later
-- releases (argo-cd PR #27596) run it and keep the status Progressing, using the
-- message. The deletion branch below serves those, with the operator's Deleting message.
local hs = {}

local function condition(conditions, wanted)
  if conditions == nil then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == wanted then
      return c
    end
  end
  return nil
end

local function describe(c, fallback)
  if c == nil then
    return fallback
  end
  local text = c.reason or fallback
  if c.message ~= nil and c.message ~= "" then
    text = text .. ": " .. c.message
  end
  return text
end

local function summary(status)
  local parts = {}
  if status.nodeSummary ~= nil then
    table.insert(parts, "nodes " .. status.nodeSummary)
  end
  if status.modeSummary ~= nil then
    table.insert(parts, "modes " .. status.modeSummary)
  end
  if #parts == 0 then
    return ""
  end
  return " (" .. table.concat(parts, ", ") .. ")"
end

local metadata = obj.metadata or {}
local status = obj.status

if metadata.deletionTimestamp ~= nil then
  hs.status = "Progressing"
  local ready = status ~= nil and condition(status.conditions, "Ready") or nil
  if ready ~= nil and ready.reason == "Deleting" and ready.message ~= nil then
    hs.message = ready.message
  else
    hs.message = "deleting: waiting for the operator to remove the attachments"
  end
  return hs
end

if status == nil or status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the kube-xdp operator to report status"
  return hs
end

if status.observedGeneration == nil or
   (metadata.generation ~= nil and status.observedGeneration ~= metadata.generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the kube-xdp operator to observe generation " .. tostring(metadata.generation)
  return hs
end

local ready = condition(status.conditions, "Ready")
local reconciling = condition(status.conditions, "Reconciling")
local stalled = condition(status.conditions, "Stalled")

if reconciling ~= nil and reconciling.status == "True" then
  hs.status = "Progressing"
  local message = describe(reconciling, "Progressing")
  if stalled ~= nil and stalled.status == "True" then
    message = message .. "; stalled: " .. describe(stalled, "Stalled")
  end
  hs.message = message .. summary(status)
  return hs
end

if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(stalled, "Stalled") .. summary(status)
  return hs
end

if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready, "Ready") .. summary(status)
  return hs
end

hs.status = "Progressing"
hs.message = describe(ready, "Waiting for the Ready condition") .. summary(status)
return hs
