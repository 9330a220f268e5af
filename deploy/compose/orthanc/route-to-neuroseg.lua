-- Orthanc auto-routing: send every MR image series to neuroseg once it is stable.
--
-- Only MR Image Storage and Enhanced MR Image Storage series are routed, so
-- neuroseg's results (SEG, Parametric Map, Comprehensive 3D SR, Encapsulated
-- STL), which arrive back into the same study, are never sent again: no loop.
-- The modality "neuroseg" is declared in orthanc.json (DicomModalities).
-- Sending runs as an asynchronous Orthanc job: a failed push (listener down)
-- shows up in /jobs and can be resubmitted with POST /jobs/<id>/resubmit.

local ROUTE_TO = 'neuroseg'

local ROUTED_SOP_CLASSES = {
  ['1.2.840.10008.5.1.4.1.1.4'] = true,    -- MR Image Storage
  ['1.2.840.10008.5.1.4.1.1.4.1'] = true,  -- Enhanced MR Image Storage
}

local function series_sop_class(seriesId)
  local instances = ParseJson(RestApiGet('/series/' .. seriesId .. '/instances'))
  if instances == nil or #instances == 0 then
    return nil
  end
  return RestApiGet('/instances/' .. instances[1]['ID'] .. '/metadata/SopClassUid')
end

function OnStableSeries(seriesId, tags, metadata)
  local sop_class = series_sop_class(seriesId)
  if sop_class == nil or not ROUTED_SOP_CLASSES[sop_class] then
    return
  end
  print('neuroseg routing: sending series ' .. seriesId .. ' (' .. (tags['SeriesDescription'] or '') .. ')')
  local request = { Resources = { seriesId }, Asynchronous = true, Permissive = false }
  RestApiPost('/modalities/' .. ROUTE_TO .. '/store', DumpJson(request, true))
end
