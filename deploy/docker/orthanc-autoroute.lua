-- Orthanc Lua script for the docker-compose demo: once a CT series is stable (no new instance for StableAge
-- seconds), send it to the TotalRegistrator node (modality "totalreg"). Series the node itself stored (its
-- results: calling AE TOTALREG) are never sent back, so results cannot loop.
-- Tested against Orthanc 1.10 by tests/deploy/test_deploy_files.py (test_orthanc_autoroute_lua).

NODE_MODALITY = 'totalreg'
NODE_AET = 'TOTALREG'

function OnStableSeries(seriesId, tags, metadata)
  if tags['Modality'] ~= 'CT' then
    return
  end
  local series = ParseJson(RestApiGet('/series/' .. seriesId))
  local first = series['Instances'][1]
  if first == nil then
    return
  end
  local meta = ParseJson(RestApiGet('/instances/' .. first .. '/metadata?expand'))
  if meta['RemoteAET'] == NODE_AET then
    return
  end
  print('autoroute: sending CT series ' .. seriesId .. ' to ' .. NODE_MODALITY)
  -- a store job on the whole series (one association), run asynchronously so the Lua thread is not blocked
  RestApiPost('/modalities/' .. NODE_MODALITY .. '/store',
              DumpJson({Resources = {seriesId}, Asynchronous = true}, true))
end
