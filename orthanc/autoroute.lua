-- Orthanc auto-routing to uronode.
-- Every CT series that becomes stable (StableAge seconds after its last instance)
-- is sent to the node, registered in DicomModalities as URONODE. The node's own
-- results (Manufacturer "uronode": SEG, Secondary Capture, SR) and every other
-- modality stay where they are, so nothing ever loops back.

local NODE = 'URONODE'

function OnStableSeries(seriesId, tags, metadata)
  local modality = tags['Modality'] or ''
  local manufacturer = string.lower(tags['Manufacturer'] or '')
  if modality ~= 'CT' then
    return
  end
  if manufacturer == 'uronode' then
    return
  end
  -- Every soft-tissue axial reconstruction sent is analysed, each with results of its own. A site that
  -- wants one analysis per scan routes only the series it wants read (the thinnest soft-tissue axial
  -- series is the model's best input), for example by its description:
  --   if not string.find(string.upper(tags['SeriesDescription'] or ''), '1.25MM', 1, true) then return end
  PrintRecursive('uronode auto-routing: sending series ' .. seriesId .. ' to ' .. NODE)
  RestApiPost('/modalities/' .. NODE .. '/store',
              '{"Resources": ["' .. seriesId .. '"], "Asynchronous": true}')
end
